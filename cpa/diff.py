"""What changes between two versions of a CPA, for an operator about to replace one.

A pure function over two parsed CPAs: each is flattened into named facts
(the validity period, each party's endpoints, certificates, actions and
reliable-messaging parameters), and the facts are compared by name.  ``dkgw
cpa diff`` and ``dkgw cpa import --overwrite`` print the result
(docs/operations.md, "CPA lifecycle").  Parties are named by their PartyIds
(CPPA 2.0 §8.4.2), so a renamed party is a change of name, not a new party.
"""

from __future__ import annotations

from dataclasses import dataclass

from cpa.certificates import facts, load_der
from cpa.model import Cpa, MessagingBinding, PartyInfo

__all__ = ["Change", "diff_cpas", "format_change"]


@dataclass(frozen=True)
class Change:
    """One fact that differs: added (``old`` None), removed (``new`` None) or changed."""

    what: str
    old: str | None
    new: str | None

    @property
    def kind(self) -> str:
        """``added``, ``removed`` or ``changed``."""
        if self.old is None:
            return "added"
        if self.new is None:
            return "removed"
        return "changed"


def _certificate(der: bytes | None) -> str:
    if der is None:
        return "no certificate data"
    try:
        f = facts(load_der(der))
    except ValueError:
        return "unreadable certificate"
    return (
        f"{f.subject}, SHA-256 {f.sha256}, valid {f.not_before.isoformat()} "
        f"to {f.not_after.isoformat()}"
    )


def _binding(binding: MessagingBinding) -> str:
    parts = [f"ebMS {binding.version}"]
    rm = binding.reliable_messaging
    if rm is None:
        parts.append("best effort")
    else:
        interval = rm.retry_interval.total_seconds() if rm.retry_interval is not None else None
        parts.append(f"retries {rm.retries}, retry interval {interval} s")
    if binding.persist_duration is not None:
        parts.append(f"persist {binding.persist_duration.total_seconds()} s")
    if binding.non_repudiation is not None:
        parts.append(f"signed ({binding.non_repudiation.certificate_id or '-'})")
    if binding.digital_envelope is not None:
        parts.append(f"encrypted ({binding.digital_envelope.algorithm})")
    return ", ".join(parts)


def _party_facts(party: PartyInfo) -> dict[str, str]:
    name = "party " + ",".join(sorted(p.key() for p in party.party_ids))
    out = {f"{name} name": party.party_name}
    for transport in party.transports.values():
        where = f"{name} transport {transport.transport_id}"
        out[f"{where} endpoints"] = ", ".join(sorted(e.uri for e in transport.endpoints))
        for side, security in (("client", transport.client_security),
                               ("server", transport.server_security)):  # fmt: skip
            if security is not None:
                out[f"{where} TLS {side} certificate"] = security.certificate_id or "-"
    for cert in party.certificates.values():
        out[f"{name} certificate {cert.cert_id}"] = _certificate(cert.der)
    for role in party.roles:
        where = f"{name} role {role.role} service {role.service.key()}"
        for verb, bindings in (("sends", role.can_send), ("receives", role.can_receive)):
            for binding in bindings:
                out[f"{where} {verb} {binding.action}"] = ", ".join(binding.channel_ids)
    for exchange in party.doc_exchanges.values():
        for side, messaging in (("sender", exchange.sender), ("receiver", exchange.receiver)):
            if messaging is not None:
                key = f"{name} doc exchange {exchange.doc_exchange_id} {side}"
                out[key] = _binding(messaging)
    return out


def _facts(cpa: Cpa) -> dict[str, str]:
    out = {
        "CPA id": cpa.cpa_id,
        "status": cpa.status,
        "version": cpa.version or "-",
        "validity": f"{cpa.start.isoformat()} to {cpa.end.isoformat()}",
    }
    for party in cpa.parties:
        out.update(_party_facts(party))
    return out


def diff_cpas(old: Cpa, new: Cpa) -> list[Change]:
    """Every fact that differs between ``old`` and ``new``, in a stable order."""
    before, after = _facts(old), _facts(new)
    changes = []
    for what in sorted(before.keys() | after.keys()):
        if before.get(what) != after.get(what):
            changes.append(Change(what, before.get(what), after.get(what)))
    return changes


def format_change(change: Change) -> str:
    """One line for an operator: ``+``, ``-`` or ``~`` and the fact."""
    if change.kind == "added":
        return f"+ {change.what}: {change.new}"
    if change.kind == "removed":
        return f"- {change.what}: {change.old}"
    return f"~ {change.what}: {change.old} -> {change.new}"
