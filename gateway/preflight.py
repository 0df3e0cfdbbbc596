"""``dkgw serve --check``: everything a start needs, short of listening, as findings.

Each check is a plain function that returns :class:`Finding` objects (nothing is
raised, nothing printed), so the report lists **every** problem, not the first;
:func:`run_checks` strings them together for one config.  ``dkgw serve`` runs the
same checks before it listens and refuses to start on an error
(docs/operations.md, "Starting and checking").

Severities: an *error* would make the gateway fail or be refused by partners
(an expired or revoked certificate, a key that is not the certificate's, a
world-readable key, a store it cannot use); a *warning* needs attention soon (a
certificate expiring within 30 days, a group-readable key).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from cpa.model import Cpa, PartyId, PartyInfo
from gateway.config import GatewayConfig
from gateway.material.findings import Finding, Severity, error, has_errors, warning
from gateway.material.inspect import (
    EXPIRY_WARNING,
    check_key_permissions,
    check_trusted,
    check_validity,
    inspect_pairs,
    load_pair,
)
from gateway.material.load import load_message_security
from gateway.store.database import Cursor
from gateway.trust import TrustStore

__all__ = [
    "EXPIRY_WARNING",
    "Finding",
    "OwnCertificates",
    "Severity",
    "check_cpa_certificates",
    "check_data_dir",
    "check_directory",
    "check_folders",
    "check_key_permissions",
    "check_schema",
    "check_trusted",
    "check_validity",
    "check_webhook_files",
    "error",
    "has_errors",
    "load_pair",
    "run_checks",
    "warning",
]


# -- files and directories ------------------------------------------------------------


def check_data_dir(path: Path) -> list[Finding]:
    """``data_dir`` exists (or can be created) as a directory we may write in."""
    return check_directory("[gateway] data_dir", path)


def check_directory(subject: str, path: Path) -> list[Finding]:
    """A folder the gateway writes in exists (or can be created) and is writable."""
    if path.exists():
        if not path.is_dir():
            return [error(subject, f"{path} is not a directory")]
        if not os.access(path, os.W_OK | os.X_OK):
            return [error(subject, f"{path} is not writable")]
        return []
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return [error(subject, f"{path} cannot be created: {parent} is not a directory")]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [error(subject, f"{path} cannot be created: {parent} is not writable")]
    return []


def check_folders(config: GatewayConfig) -> list[Finding]:
    """The file-drop and relay folders: each one a directory the gateway can write in."""
    folders: list[tuple[str, Path | None]] = []
    for drop in config.filedrops:
        folders += [
            (f"[[filedrop]] {drop.name} outbox", drop.outbox),
            (f"[[filedrop]] {drop.name} inbox", drop.inbox),
        ]
    stuf = config.stuf
    if stuf.role:
        folders += [
            ("[stuf] outbox", stuf.outbox),
            ("[stuf] inbox", stuf.inbox),
            ("[stuf] provider_outbox", stuf.provider_outbox),
            ("[stuf] provider_inbox", stuf.provider_inbox),
        ]
    findings: list[Finding] = []
    for subject, path in folders:
        if path is not None:
            findings += check_directory(subject, path)
    return findings


def check_webhook_files(config: GatewayConfig, now: datetime) -> list[Finding]:
    """Each webhook's secret (readable, private) and CA file (PEM certificates)."""
    findings: list[Finding] = []
    for hook in config.webhooks:
        subject = f"[[webhook]] {hook.name}"
        if hook.secret_file is not None:
            try:
                if not hook.secret_file.read_bytes().strip():
                    findings.append(error(f"{subject} secret_file", f"{hook.secret_file} is empty"))
            except OSError as exc:
                findings.append(
                    error(
                        f"{subject} secret_file", f"cannot read {hook.secret_file}: {exc.strerror}"
                    )
                )
            else:
                findings += check_key_permissions(f"{subject} secret_file", hook.secret_file)
        if hook.ca_file is not None:
            try:
                certificates = x509.load_pem_x509_certificates(hook.ca_file.read_bytes())
            except OSError as exc:
                findings.append(
                    error(f"{subject} ca_file", f"cannot read {hook.ca_file}: {exc.strerror}")
                )
            except ValueError:
                findings.append(
                    error(f"{subject} ca_file", f"{hook.ca_file} holds no PEM certificate")
                )
            else:
                findings += [
                    error(f"{subject} ca_file", f"{_subject(c)} in {hook.ca_file} expired")
                    for c in certificates
                    if c.not_valid_after_utc <= now
                ]
    return findings


def _subject(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string()


# -- CPAs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OwnCertificates:
    """The DER of each certificate we present, by role; None when not configured."""

    tls_server: bytes | None
    tls_client: bytes | None
    signing: bytes | None = None
    encryption: bytes | None = None

    def all(self) -> set[bytes]:
        """Every configured certificate."""
        ders = (self.tls_server, self.tls_client, self.signing, self.encryption)
        return {d for d in ders if d is not None}


def _party_certificates(party: PartyInfo) -> dict[str, set[bytes]]:
    """The certificates a party's CPA entry says it presents, by role."""
    found: dict[str, set[bytes]] = {
        "TLS client": set(),
        "TLS server": set(),
        "signing": set(),
        "encryption": set(),
    }

    def add(role: str, cert_id: str | None) -> None:
        cert = party.certificates.get(cert_id) if cert_id else None
        if cert is not None and cert.der is not None:
            found[role].add(cert.der)

    for transport in party.transports.values():
        if transport.client_security is not None:
            add("TLS client", transport.client_security.certificate_id)
        if transport.server_security is not None:
            add("TLS server", transport.server_security.certificate_id)
    for exchange in party.doc_exchanges.values():
        # CPPA 2.0: our SigningCertificateRef is on the sender binding, our
        # EncryptionCertificateRef on the receiver binding.
        if exchange.sender is not None and exchange.sender.non_repudiation is not None:
            add("signing", exchange.sender.non_repudiation.certificate_id)
        if exchange.receiver is not None and exchange.receiver.digital_envelope is not None:
            add("encryption", exchange.receiver.digital_envelope.certificate_id)
    return found


def _subject_of(der: bytes) -> str:
    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        return "an unreadable certificate"


def check_cpa_certificates(
    cpas: Sequence[Cpa], own: OwnCertificates, party_ids: Sequence[PartyId], now: datetime
) -> list[Finding]:
    """In every CPA in force, our party names the certificates we present.

    Our party is the one holding ``[gateway] party_ids``; without those, the one
    naming any of our certificates.  A partner checks our TLS and signing
    certificates against its copy of the CPA and encrypts to the certificate
    in it, so a mismatch means refused or unreadable messages.
    """
    findings: list[Finding] = []
    ours = {
        "TLS client": own.tls_client,
        "TLS server": own.tls_server,
        "signing": own.signing,
        "encryption": own.encryption,
    }
    for cpa in cpas:
        if not cpa.in_force(now):
            continue
        subject = f"CPA {cpa.cpa_id}"
        if party_ids:
            parties = [p for p in cpa.parties if any(i in p.party_ids for i in party_ids)]
        else:
            parties = [
                p for p in cpa.parties if own.all() & set().union(*_party_certificates(p).values())
            ]
        if not parties:
            findings.append(error(subject, "none of its parties presents our certificates"))
            continue
        for party in parties:
            for role, listed in _party_certificates(party).items():
                mine = ours[role]
                if not listed or mine is None or mine in listed:
                    continue
                findings.append(
                    error(
                        subject,
                        f"party {party.party_name!r} has a {role} certificate "
                        f"({', '.join(sorted(_subject_of(d) for d in listed))}) that is not "
                        f"the one we present ({_subject_of(mine)})",
                    )
                )
    return findings


# -- the store ------------------------------------------------------------------------


def check_schema(applied: Iterable[int], known: Iterable[int]) -> list[Finding]:
    """A store migrated by a newer gateway cannot be used by this one."""
    newer = sorted(set(applied) - set(known))
    if newer:
        return [
            error(
                "[gateway] store",
                f"the store has schema version {max(newer):04d}, newer than this gateway's "
                f"{max(known, default=0):04d}; downgrading is not supported",
            )
        ]
    return []


def _store_findings(config: GatewayConfig) -> tuple[list[Finding], list[Cpa]]:
    """Open the store without changing it: schema version and the CPAs in it."""
    from gateway.errors import describe
    from gateway.store.cpas import CpaRegistry, select_all
    from gateway.store.database import Database
    from gateway.store.migrate import load_migrations

    subject = "[gateway] store"
    url = config.store
    if url.startswith("sqlite:"):
        path = Path(url.removeprefix("sqlite:").removeprefix("//"))
        if not path.exists():
            return [], []  # a first start creates it (check_data_dir covers the directory)
    try:
        db = Database.from_url(url)
    except Exception as exc:  # a bad URL
        return [error(subject, describe(exc) or str(exc))], []
    try:
        with db.transaction() as cur:
            cur.execute("SELECT 1").fetchone()
        with db.transaction() as cur:
            has_schema = _has_table(cur, "schema_migration")
            applied = (
                [int(r[0]) for r in cur.execute("SELECT version FROM schema_migration").fetchall()]
                if has_schema
                else []
            )
        findings = check_schema(applied, [m.version for m in load_migrations(db.dialect)])
        cpas: list[Cpa] = []
        if has_schema and not findings:
            registry = CpaRegistry(db)
            with db.transaction() as cur:
                if _has_table(cur, "cpa"):
                    cpas = [registry.get_cpa(row.cpa_id, cur) for row in select_all(cur)]
        return findings, cpas
    except Exception as exc:
        return [error(subject, describe(exc) or f"{type(exc).__name__}: {exc}")], []
    finally:
        db.close()


def _has_table(cur: Cursor, name: str) -> bool:
    if cur.dialect == "sqlite":
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    else:
        sql = (
            "SELECT 1 FROM information_schema.tables WHERE table_name = ? "
            "AND table_schema = ANY(current_schemas(false))"
        )
    return cur.execute(sql, (name,)).fetchone() is not None


# -- everything -----------------------------------------------------------------------


def run_checks(config: GatewayConfig, now: datetime) -> list[Finding]:
    """Every check for one configuration, in the order an operator reads them."""
    findings = check_data_dir(config.data_dir)
    findings += check_folders(config)
    findings += check_webhook_files(config, now)
    trust: TrustStore | None = None
    try:
        # Keys are checked below, one finding each; here only the trust store.
        trust = load_message_security(config, keys=False).trust
    except (OSError, ValueError) as exc:
        findings.append(error("[security] trust", str(exc)))
    settings = config.security.trust
    # Without a crl_dir there is nothing to check revocation against before the
    # first fetch; one line says so instead of one per certificate and CA.
    crls_at_hand = settings.crl_dir is not None
    if settings.crl_mode != "off" and not crls_at_hand:
        findings.append(
            warning(
                "[security] crl_mode",
                f"{settings.crl_mode}, but no crl_dir: revocation "
                + (
                    "is not checked until crl_urls are fetched"
                    if settings.crl_urls
                    else "is never checked"
                ),
            )
        )
    inspected = inspect_pairs(config, trust, now, crls_at_hand=crls_at_hand)
    findings += inspected.findings
    loaded = inspected.certificates

    store_findings, cpas = _store_findings(config)
    findings += store_findings
    own = OwnCertificates(
        tls_server=loaded.get("[tls] certificate"),
        tls_client=loaded.get("[tls] client_certificate"),
        signing=loaded.get("[security] signing_certificate"),
        encryption=loaded.get("[security] encryption_certificate"),
    )
    findings += check_cpa_certificates(cpas, own, config.party_ids, now)
    return findings
