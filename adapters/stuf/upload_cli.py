"""The seam of ``dkgw upload`` (:mod:`gateway.commands.stuf`): each file through the relay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adapters.stuf.relaybase import Refused
from adapters.upload import Accepted, Rejected
from gateway.store.cpas import CpaRegistry


def upload_handler(args: Any, session: Any) -> Callable[[str, bytes], Accepted | Rejected]:
    """The per-file handler of ``dkgw upload``: send each message through the relay."""
    from adapters.stuf.relay import Relay  # the module that composes it, importing this one
    from gateway.config import load_config
    from gateway.material.load import load_message_security

    if getattr(args, "config", None) is None:
        raise ValueError("dkgw upload needs --config (the gateway's [stuf] section)")
    config = load_config(args.config)
    if not config.stuf.role:
        raise ValueError(f"{args.config}: [stuf] role is not set")
    security = load_message_security(config)
    relay = Relay(
        session.db,
        CpaRegistry(session.db),
        config.stuf,
        security=security,
        own_parties=config.party_ids,
        node_id=session.node,
    )

    def handle(name: str, data: bytes) -> Accepted | Rejected:
        try:
            sent = relay.send(data, file_name=name, batch_id=session.batch_id,
                              record_refusal=False)  # fmt: skip
        except Refused as refused:
            sg = refused.envelope.stuurgegevens if refused.envelope else None
            return Rejected(
                refused.code,
                refused.reason,
                referentienummer=sg.referentienummer if sg else None,
                functie=sg.functie if sg else None,
                berichtcode=sg.berichtcode if sg else None,
                sender_org=sg.zender.organisatie if sg else None,
                receiver_org=sg.ontvanger.organisatie if sg else None,
            )
        return Accepted(sent.referentienummer, sent.functie)

    return handle
