"""``dkgw cpa ...``: validate, import, list, show, delete and make CPAs."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cpa.certificates import CertificateFacts, facts, load_der
from cpa.diff import diff_cpas, format_change
from cpa.generate import (
    PROFILES,
    ActionSpec,
    CpaSpec,
    CpaSpecError,
    PartySpec,
    format_duration,
    make_cpa,
)
from cpa.model import Cpa, PartyInfo
from cpa.parse import CpaReadError, parse_cpa
from cpa.validate import ValidationOptions, ValidationReport, validate_cpa
from cpa.xsdtypes import parse_duration
from gateway.commands.common import fail, load_party, open_store, read_input
from gateway.store.cpas import CpaExists, CpaInUse, CpaInvalid, CpaNotFound, CpaRegistry, StoredCpa


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cpa`` and its subcommands to the top-level parser."""
    cpa = sub.add_parser("cpa", help="manage Collaboration-Protocol Agreements")
    cmds = cpa.add_subparsers(dest="cpa_command", required=True, metavar="SUBCOMMAND")

    def validation_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--allow-insecure", action="store_true", help="accept plain http endpoints (tests only)"
        )
        p.add_argument(
            "--legacy-crypto",
            action="store_true",
            help="accept SHA-1, RSA-SHA1 and AES-CBC found in old CPAs",
        )

    p = cmds.add_parser("validate", help="validate a CPA file without storing it")
    p.add_argument("file", help="CPA XML file, or - for standard input")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    validation_flags(p)
    p.set_defaults(handler=cmd_validate)

    p = cmds.add_parser("import", help="validate and store a CPA")
    p.add_argument("file", help="CPA XML file, or - for standard input")
    p.add_argument("--overwrite", action="store_true", help="replace a CPA with the same id")
    validation_flags(p)
    p.set_defaults(handler=cmd_import)

    p = cmds.add_parser("diff", help="show what a CPA file changes against the stored CPA")
    p.add_argument("file", help="CPA XML file, or - for standard input")
    p.add_argument(
        "--against", metavar="ID", help="the stored CPA to compare with (default: same id)"
    )
    p.set_defaults(handler=cmd_diff)

    p = cmds.add_parser("list", help="list stored CPAs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_list)

    p = cmds.add_parser("show", help="summarise a stored CPA")
    p.add_argument("cpa_id", help="the CPA's cpaid")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--xml", action="store_true", help="print the stored XML, byte-exact")
    p.set_defaults(handler=cmd_show)

    p = cmds.add_parser("delete", help="delete a stored CPA")
    p.add_argument("cpa_id", help="the CPA's cpaid")
    p.add_argument(
        "--force",
        action="store_true",
        help="also when messages are pending on it: they fail ('CPA deleted by operator')",
    )
    p.set_defaults(handler=cmd_delete)

    p = cmds.add_parser(
        "make",
        help="write a Digikoppeling CPA for two parties",
        description="Write a CPA for parties A and B. Certificate directories hold "
        "tls-client.pem, tls-server.pem and, for signed/encrypted profiles, signing.pem and "
        "encryption.pem (the layout certs-example/make-pki writes).",
    )
    for side in ("a", "b"):
        up = side.upper()
        p.add_argument(f"--{side}-name", required=True, help=f"party {up} name")
        p.add_argument(f"--{side}-id", required=True, help=f"party {up} id, e.g. its OIN")
        p.add_argument(f"--{side}-id-type", default="urn:osb:oin", help="PartyId type")
        p.add_argument(f"--{side}-role", required=True, help=f"party {up} role")
        p.add_argument(f"--{side}-endpoint", required=True, help=f"party {up} https endpoint")
        p.add_argument(
            f"--{side}-certs", required=True, type=Path, help=f"party {up} certificate directory"
        )
    p.add_argument("--service", required=True, help="service, e.g. GGK:iWmo:3.2")
    p.add_argument(
        "--service-type",
        default="urn:osb:services",
        help="the Service element's type attribute (default urn:osb:services)",
    )
    p.add_argument(
        "--action",
        action="append",
        required=True,
        metavar="SIDE:ACTION",
        help="an action and its sender, e.g. a:WMO301 (repeatable)",
    )
    p.add_argument(
        "--profile",
        choices=PROFILES,
        default="osb-rm",
        help="DK profile (default osb-rm)",
    )
    p.add_argument("--cpa-id", help="default: service_partyA_partyB_uuid")
    p.add_argument("--days", type=int, default=365, help="validity from now (default 365)")
    p.add_argument("--retries", type=int, default=8, help="reliable-messaging retries (default 8)")
    p.add_argument("--retry-interval", default="PT3H", help="xsd:duration (default PT3H)")
    p.add_argument("--persist-duration", default="P1D", help="xsd:duration (default P1D)")
    p.add_argument("--sync-reply", action="store_true", help="syncReplyMode mshSignalsOnly")
    p.add_argument("--ack-signed", action="store_true", help="ackSignatureRequested always")
    p.add_argument("-o", "--output", default="-", help="output file (default standard output)")
    p.set_defaults(handler=cmd_make)


def _options(args: argparse.Namespace) -> ValidationOptions:
    return ValidationOptions(allow_insecure=args.allow_insecure, legacy_crypto=args.legacy_crypto)


# -- validate / import -------------------------------------------------------


def _report_text(report: ValidationReport) -> str:
    lines = []
    cpa = report.cpa
    verdict = "valid" if report.ok else "INVALID"
    counts = f"{len(report.errors)} errors, {len(report.warnings)} warnings"
    lines.append(f"CPA {cpa.cpa_id if cpa else '?'}: {verdict} ({counts})")
    lines.extend(f"  {f}" for f in report.findings)
    if report.actions:
        lines.append("actions:")
        for a in report.actions:
            lines.append(
                f"  {a.from_party} ({a.from_role}) -> {a.to_party} ({a.to_role})  "
                f"{a.service}  {a.action}  {a.profile}"
            )
    return "\n".join(lines)


def _report_json(report: ValidationReport) -> dict[str, Any]:
    return {
        "cpaId": report.cpa.cpa_id if report.cpa else None,
        "valid": report.ok,
        "profiles": report.profiles,
        "findings": [
            {"severity": f.severity, "line": f.line, "location": f.location, "message": f.message}
            for f in report.findings
        ],
        "actions": [vars(a) for a in report.actions],
    }


def cmd_validate(args: argparse.Namespace) -> int:
    """``dkgw cpa validate FILE``."""
    try:
        xml = read_input(args.file)
    except OSError as exc:
        return fail(f"cannot read {args.file}: {exc.strerror}")
    report = validate_cpa(xml, _options(args))
    if args.json:
        print(json.dumps(_report_json(report), indent=2))
    else:
        print(_report_text(report))
    return 0 if report.ok else 1


def cmd_import(args: argparse.Namespace) -> int:
    """``dkgw cpa import FILE [--overwrite]``."""
    try:
        xml = read_input(args.file)
    except OSError as exc:
        return fail(f"cannot read {args.file}: {exc.strerror}")
    registry = CpaRegistry(open_store(args, create=True), _options(args))
    changes = _changes(registry, xml, None) if args.overwrite else None
    try:
        row, replaced, report = registry.insert(xml, overwrite=args.overwrite)
    except CpaInvalid as exc:
        print(_report_text(exc.report), file=sys.stderr)
        return fail("CPA not imported")
    except CpaExists as exc:
        return fail(str(exc))
    for finding in report.warnings:
        print(f"  {finding}", file=sys.stderr)
    print(
        f"{'replaced' if replaced else 'imported'} {row.cpa_id} "
        f"({', '.join(report.profiles) or 'no actions'}; valid until {row.end:%Y-%m-%d})"
    )
    if replaced and changes is not None:
        for line in changes or ["no changes"]:
            print(f"  {line}")
    return 0


def _changes(registry: CpaRegistry, xml: bytes, against: str | None) -> list[str] | None:
    """Lines saying what ``xml`` changes against the stored CPA; None when there is none."""
    try:
        new = parse_cpa(xml)
    except (CpaReadError, ValueError):
        return None  # the import's validation says what is wrong with it
    try:
        old = registry.get_cpa(against or new.cpa_id)
    except CpaNotFound:
        return None
    return [format_change(c) for c in diff_cpas(old, new)]


def cmd_diff(args: argparse.Namespace) -> int:
    """``dkgw cpa diff FILE [--against ID]``: what importing FILE would change."""
    try:
        xml = read_input(args.file)
    except OSError as exc:
        return fail(f"cannot read {args.file}: {exc.strerror}")
    try:
        new = parse_cpa(xml)
    except (CpaReadError, ValueError) as exc:
        return fail(f"{args.file} is not a readable CPA: {exc}")
    registry = CpaRegistry(open_store(args))
    try:
        old = registry.get_cpa(args.against or new.cpa_id)
    except CpaNotFound as exc:
        return fail(str(exc))
    changes = diff_cpas(old, new)
    for change in changes:
        print(format_change(change))
    if not changes:
        print("no changes")
    return 0


# -- list / show / delete ----------------------------------------------------


def _days_left(when: datetime, now: datetime) -> int:
    return (when - now) // timedelta(days=1)


def _parties_text(row: StoredCpa) -> str:
    return " <-> ".join(
        f"{p['name']} [{', '.join(p['party_ids'])}]" for p in row.summary.get("parties", [])
    )


def cmd_list(args: argparse.Namespace) -> int:
    """``dkgw cpa list``."""
    rows = CpaRegistry(open_store(args)).list()
    now = datetime.now(UTC)
    if args.json:
        print(json.dumps([_row_json(r, now) for r in rows], indent=2))
        return 0
    if not rows:
        print("no CPAs stored")
        return 0
    for row in rows:
        state = "EXPIRED" if row.end <= now else f"{_days_left(row.end, now)}d left"
        print(
            f"{row.cpa_id}  {row.status}  until {row.end:%Y-%m-%d} ({state})  "
            f"{','.join(row.summary.get('profiles', []))}  {_parties_text(row)}"
        )
    return 0


def _row_json(row: StoredCpa, now: datetime) -> dict[str, Any]:
    return {
        "cpaId": row.cpa_id,
        "status": row.status,
        "start": row.start.isoformat(),
        "end": row.end.isoformat(),
        "daysLeft": _days_left(row.end, now),
        "sha256": row.sha256,
        "created": row.created_at.isoformat(),
        "updated": row.updated_at.isoformat(),
        **row.summary,
    }


def certificate_uses(party: PartyInfo) -> dict[str, list[str]]:
    """For each certificate id of ``party``, what the CPA uses it for."""
    uses: dict[str, list[str]] = {cid: [] for cid in party.certificates}

    def add(cert_id: str | None, use: str) -> None:
        if cert_id in uses and use not in uses[cert_id]:
            uses[cert_id].append(use)

    for transport in party.transports.values():
        add(
            transport.client_security.certificate_id if transport.client_security else None,
            "TLS client",
        )
        add(
            transport.server_security.certificate_id if transport.server_security else None,
            "TLS server",
        )
    for doc in party.doc_exchanges.values():
        if doc.sender and doc.sender.non_repudiation:
            add(doc.sender.non_repudiation.certificate_id, "signing")
        if doc.receiver and doc.receiver.digital_envelope:
            add(doc.receiver.digital_envelope.certificate_id, "encryption")
    return uses


def _cert_facts(party: PartyInfo, cert_id: str) -> CertificateFacts | None:
    cert = party.certificates[cert_id]
    if not cert.der:
        return None
    try:
        return facts(load_der(cert.der))
    except ValueError:
        return None


def _show_data(row: StoredCpa, cpa: Cpa, report: ValidationReport, now: datetime) -> dict[str, Any]:
    parties = []
    for party in cpa.parties:
        certs = []
        for cert_id, used_for in certificate_uses(party).items():
            info = _cert_facts(party, cert_id)
            certs.append(
                {
                    "certId": cert_id,
                    "uses": used_for,
                    "subject": info.subject if info else None,
                    "oin": info.oin if info else None,
                    "notAfter": info.not_after.isoformat() if info else None,
                    "daysLeft": _days_left(info.not_after, now) if info else None,
                }
            )
        endpoints = sorted({ep.uri for t in party.transports.values() for ep in t.endpoints})
        reliability = sorted(
            {
                (
                    rm.retries,
                    format_duration(rm.retry_interval) if rm.retry_interval else "-",
                    format_duration(doc.sender.persist_duration)
                    if doc.sender.persist_duration
                    else "-",
                )
                for doc in party.doc_exchanges.values()
                if doc.sender and (rm := doc.sender.reliable_messaging)
            }
        )
        parties.append(
            {
                "name": party.party_name,
                "partyIds": [p.key() for p in party.party_ids],
                "roles": sorted({r.role for r in party.roles}),
                "endpoints": endpoints,
                "certificates": certs,
                "reliableMessaging": [
                    {"retries": r, "retryInterval": i, "persistDuration": d}
                    for r, i, d in reliability
                ],
            }
        )
    return {
        **_row_json(row, now),
        "parties": parties,
        "actions": [vars(a) for a in report.actions],
        "warnings": [str(f) for f in report.warnings],
    }


def _show_text(data: dict[str, Any]) -> str:
    out = [
        f"CPA {data['cpaId']}",
        f"  status    {data['status']}",
        f"  valid     {data['start'][:19]} -> {data['end'][:19]} UTC "
        f"({'EXPIRED' if data['daysLeft'] < 0 else str(data['daysLeft']) + ' days left'})",
        f"  stored    sha256 {data['sha256']}, imported {data['created'][:19]}, "
        f"updated {data['updated'][:19]}",
    ]
    for party in data["parties"]:
        out.append("")
        out.append(f"Party {party['name']!r}  role {', '.join(party['roles'])}")
        out.append(f"  party ids  {', '.join(party['partyIds'])}")
        for ep in party["endpoints"]:
            out.append(f"  endpoint   {ep}")
        for rm in party["reliableMessaging"]:
            out.append(
                f"  reliable   retries {rm['retries']}, interval {rm['retryInterval']}, "
                f"persist {rm['persistDuration']}"
            )
        for cert in party["certificates"]:
            uses = ", ".join(cert["uses"]) or "unused"
            if cert["subject"] is None:
                out.append(f"  cert {cert['certId']} ({uses}): no X.509 certificate")
                continue
            out.append(f"  cert {cert['certId']} ({uses})")
            out.append(f"       {cert['subject']}")
            out.append(
                f"       OIN {cert['oin'] or '-'}, expires {cert['notAfter'][:10]} "
                f"({cert['daysLeft']} days)"
            )
    out.append("")
    out.append("Actions")
    for a in data["actions"]:
        out.append(
            f"  {a['from_party']} ({a['from_role']}) -> {a['to_party']} ({a['to_role']})"
            f"  {a['service']}  {a['action']}  {a['profile']}"
        )
    if data["warnings"]:
        out.append("")
        out.append("Warnings")
        out.extend(f"  {w}" for w in data["warnings"])
    return "\n".join(out)


def cmd_show(args: argparse.Namespace) -> int:
    """``dkgw cpa show ID``."""
    registry = CpaRegistry(open_store(args))
    try:
        row = registry.get(args.cpa_id)
        xml = registry.get_xml(args.cpa_id)
    except CpaNotFound as exc:
        return fail(str(exc))
    if args.xml:
        sys.stdout.buffer.write(xml)
        return 0
    # Re-validate against today's clock: "show" is where an operator looks for
    # what has gone stale since the import (expired certificates, say).
    report = validate_cpa(xml, ValidationOptions(allow_insecure=True, legacy_crypto=True))
    if report.cpa is None:
        return fail(f"stored CPA {args.cpa_id!r} no longer parses")
    data = _show_data(row, report.cpa, report, datetime.now(UTC))
    print(json.dumps(data, indent=2) if args.json else _show_text(data))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """``dkgw cpa delete ID``."""
    try:
        failed = CpaRegistry(open_store(args)).delete(args.cpa_id, force=args.force)
    except CpaNotFound as exc:
        return fail(str(exc))
    except CpaInUse as exc:
        return fail(f"{exc}; use --force to fail them")
    if failed:
        noun = "message" if failed == 1 else "messages"
        print(f"deleted {args.cpa_id}; {failed} pending {noun} failed")
    else:
        print(f"deleted {args.cpa_id}")
    return 0


# -- make --------------------------------------------------------------------


def _party_spec(args: argparse.Namespace, side: str) -> PartySpec:
    return load_party(
        getattr(args, f"{side}_certs"),
        name=getattr(args, f"{side}_name"),
        party_id=getattr(args, f"{side}_id"),
        party_id_type=getattr(args, f"{side}_id_type"),
        role=getattr(args, f"{side}_role"),
        endpoint=getattr(args, f"{side}_endpoint"),
    )


def _actions(values: list[str]) -> tuple[ActionSpec, ...]:
    actions = []
    for value in values:
        side, sep, name = value.partition(":")
        if not sep or side not in ("a", "b") or not name:
            raise CpaSpecError(f"action: {value!r} is not SIDE:ACTION with SIDE a or b")
        actions.append(ActionSpec(name=name, sender="a" if side == "a" else "b"))
    return tuple(actions)


def cmd_make(args: argparse.Namespace) -> int:
    """``dkgw cpa make ...``: write a CPA and check it with the import validator."""
    try:
        start = datetime.now(UTC).replace(microsecond=0)
        spec = CpaSpec(
            a=_party_spec(args, "a"),
            b=_party_spec(args, "b"),
            service=args.service,
            service_type=args.service_type,
            actions=_actions(args.action),
            profile=args.profile,
            start=start,
            end=start + timedelta(days=args.days),
            cpa_id=args.cpa_id,
            retries=args.retries,
            retry_interval=parse_duration(args.retry_interval),
            persist_duration=parse_duration(args.persist_duration),
            sync_reply=args.sync_reply,
            ack_signed=args.ack_signed,
        )
        xml = make_cpa(spec)
    except OSError as exc:
        return fail(f"cannot read certificate {exc.filename}: {exc.strerror}")
    except (CpaSpecError, ValueError) as exc:
        return fail(str(exc))
    insecure = any(getattr(args, f"{s}_endpoint").startswith("http:") for s in ("a", "b"))
    report = validate_cpa(xml, ValidationOptions(allow_insecure=insecure))
    if not report.ok:
        print(_report_text(report), file=sys.stderr)
        return fail("the generated CPA does not validate")
    if args.output == "-":
        sys.stdout.buffer.write(xml)
    else:
        Path(args.output).write_bytes(xml)
        assert report.cpa is not None
        print(
            f"wrote {args.output}: {report.cpa.cpa_id} ({', '.join(report.profiles)})",
            file=sys.stderr,
        )
    return 0
