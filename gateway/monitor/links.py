"""Which links a gateway watches: pure functions over parsed CPAs.

Operators watch a Digikoppeling link by pinging the partner (ebMS 2.0 §8).  Every
active CPA implies one link from our party to the other one.  Which of the two
parties is "ours" comes from the configured ``party_ids`` when there are any;
otherwise from the TLS client certificate this gateway presents, because the CPA
names that certificate for the party it belongs to (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from cpa.model import Cpa, PartyId, PartyInfo
from gateway.store.pings import LinkKey

__all__ = ["links_for", "own_party"]


def own_party(
    cpa: Cpa, own_ids: Sequence[PartyId], client_certificate_der: bytes | None
) -> tuple[PartyInfo, PartyId] | None:
    """Our PartyInfo in ``cpa`` and the PartyId we send as, or None when neither matches."""
    if own_ids:
        for party in cpa.parties:
            for party_id in party.party_ids:
                if party_id in own_ids:
                    return party, party_id
        return None
    if client_certificate_der is None:
        return None
    mine = [p for p in cpa.parties if client_certificate_der in p.tls_client_certificates()]
    # Both parties with the same certificate (a loopback test CPA) is ambiguous.
    if len(mine) != 1 or not mine[0].party_ids:
        return None
    return mine[0], mine[0].party_ids[0]


def links_for(
    cpa: Cpa, own_ids: Sequence[PartyId], client_certificate_der: bytes | None
) -> list[LinkKey]:
    """The link(s) ``cpa`` implies: from our party to the other party's first PartyId."""
    found = own_party(cpa, own_ids, client_certificate_der)
    if found is None:
        return []
    party, from_id = found
    other = cpa.other_party(party)
    if not other.party_ids:
        return []
    return [LinkKey(cpa.cpa_id, from_id.key(), other.party_ids[0].key())]
