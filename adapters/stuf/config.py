"""``[stuf]``: the iWmo/iJw relay, declared once (gateway/settings/options.py; docs/stuf.md)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from adapters.stuf.store import DEFAULT_MAX_AGE, DEFAULT_READ_AFTER
from gateway.settings.options import (
    PAIRS,
    PATH,
    POSITIVE,
    STR,
    STRINGS,
    Bound,
    ConfigError,
    Context,
    Declared,
    Kind,
    Option,
    at_least,
    between,
    option,
    option_names,
    read_options,
    refuse_unknown,
)
from gateway.settings.registry import Section, register

STUF_ROLES = ("gemeente", "node")

_GEMEENTECODE = re.compile(r"[0-9]{4}")
_VERSION = re.compile(r"[0-9]{4}")
_POSITIVE = "[stuf] read_retention_hours, max_age_days, poll_interval: positive"
_FOUR_DIGITS = Bound(lambda v: bool(_VERSION.fullmatch(v)), "4 digits (ggk0210)")


@dataclass(frozen=True)
class StufMunicipality:
    """``[[stuf.gemeente]]``: a municipality connected to the node: its CPA and gemeentecodes."""

    cpa_id: str = option(help="The municipality's CPA with the node.", kind=STR)
    gemeentecodes: tuple[str, ...] = option(
        help="The CBS gemeentecodes it sends and receives for.", kind=STRINGS
    )
    #: iStandaarden releases this municipality sends ("" none: ``[stuf] releases``),
    #: as the node's per-exchange StUF version setting selects them.
    releases: tuple[str, ...] = option((), "Its releases; [] for [stuf] releases.")


@dataclass(frozen=True)
class StufConfig:
    """``[stuf]``: the iWmo/iJw relay (StUF-GGk envelope ggk0210); ``role`` "" is off.

    ``gemeente``: this gateway serves a municipality's back office; messages go to
    and come from the node over ``cpa_id``, for the ``gemeentecodes`` listed.
    ``node``: this gateway plays the GGk; each ``[[stuf.gemeente]]`` is one
    municipality's CPA and the gemeentecodes it may send and receive for;
    in the gemeente role the back office drops bare messages in ``outbox`` and
    finds what arrived, unwrapped with a JSON sidecar, in ``inbox``;
    messages for care providers (AGB codes) go to ``provider_outbox`` and
    theirs come from ``provider_inbox``.  Business messages go with the CPA
    service of their standard (``services``) and, as action, the message type
    unless ``actions`` maps it to another.
    """

    role: str = option("", '"gemeente", "node", or "" (off).')
    cpa_id: str = option("", "gemeente role: the CPA with the node.")
    gemeentecodes: tuple[str, ...] = option((), "gemeente role: the CBS gemeentecodes we send for.")
    applicatie: str = option(
        "dkgw",
        "The envelope's zender/applicatie when the gateway wraps a bare message.",
        bound=Bound(lambda v: 3 <= len(v) <= 50, "3 to 50 characters (StUF)"),
    )
    applicatie_versie: str = option("0001", "Its version (4 digits).", bound=_FOUR_DIGITS)
    applicatie_subversie: str = option("0000", "Its subversion (4 digits).", bound=_FOUR_DIGITS)
    releases: tuple[str, ...] = option(("3.2",), "iStandaarden releases accepted, per message.")
    max_envelope_bytes: int = option(
        25 * 1024 * 1024,
        "The largest envelope, base64 payload included.",
        bound=between(1024, 1 << 30, "between 1 KiB and 1 GiB"),
    )
    require_payload_schema: bool = option(
        False, "Refuse (GW005) a payload whose XSD this gateway does not have."
    )
    services: tuple[tuple[str, str], ...] = option(
        (
            ("iwmo", "urn:osb:services:GGK:iWmo:3.2"),
            ("ijw", "urn:osb:services:GGK:iJw:3.2"),
            ("ieb", "urn:osb:services:GGK:iEb:1.0"),
        ),
        'The CPA service each standard travels with ("type:value").',
        kind=PAIRS,
    )
    actions: tuple[tuple[str, str], ...] = option(
        (), "CPA actions other than the message type itself.", kind=PAIRS
    )
    gemeenten: tuple[StufMunicipality, ...] = ()
    outbox: Path | None = option(None, "gemeente role: bare messages here are sent.", kind=PATH)
    inbox: Path | None = option(None, "gemeente role: received messages, unwrapped.", kind=PATH)
    provider_outbox: Path | None = option(
        None, "node role: envelopes for care providers, a folder per AGB code.", kind=PATH
    )
    provider_inbox: Path | None = option(
        None, "node role: envelopes from care providers.", kind=PATH
    )
    # The message log's retention, as ``dkgw purge`` applies it by default.
    read_retention_hours: float = option(
        DEFAULT_READ_AFTER / timedelta(hours=1),
        "node role: delivered and read items go after this.",
        bound=POSITIVE,
        refusal=_POSITIVE,
    )
    max_age_days: int = option(
        DEFAULT_MAX_AGE.days,
        "node role: everything goes after this.",
        bound=at_least(1),
        refusal=_POSITIVE,
    )
    poll_interval: float = option(
        1.0,
        "Seconds between looks for received envelopes to relay.",
        bound=POSITIVE,
        refusal=_POSITIVE,
    )

    def service_for(self, standard: str) -> str | None:
        """The CPA service (``type:value``) messages of ``standard`` travel with."""
        return dict(self.services).get(standard)

    def action_for(self, functie: str) -> str:
        """The CPA action a message type travels with."""
        return dict(self.actions).get(functie, functie)

    def cpa_ids(self) -> tuple[str, ...]:
        """The CPAs whose business messages are StUF envelopes."""
        if self.role == "gemeente":
            return (self.cpa_id,)
        return tuple(g.cpa_id for g in self.gemeenten)


def _codes(values: tuple[str, ...], where: str) -> tuple[str, ...]:
    for code in values:
        if not _GEMEENTECODE.fullmatch(code):
            raise ConfigError(f"{where} gemeentecodes: {code!r} is not a 4-digit CBS code")
    return values


def _municipalities(entries: Any, ctx: Context) -> tuple[StufMunicipality, ...]:
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError("[[stuf.gemeente]] must be an array of tables")
    found = []
    for n, entry in enumerate(entries, 1):
        refuse_unknown(entry, option_names(StufMunicipality), "[[stuf.gemeente]]")
        values = read_options(StufMunicipality, entry, Context(f"[[stuf.gemeente]] #{n}", ctx.base))
        _codes(values.get("gemeentecodes", ()), ctx.where)
        if not values.get("cpa_id") or not values.get("gemeentecodes"):
            raise ConfigError(f"[[stuf.gemeente]] #{n} needs cpa_id and gemeentecodes")
        found.append(StufMunicipality(**values))
    return tuple(found)


def _read_stuf(table: Mapping[str, Any], ctx: Context, _: Mapping[str, Any]) -> StufConfig:
    role = STR.read(table.get("role", ""), "role", ctx)
    if role == "":
        if set(table) - {"role"}:
            raise ConfigError('[stuf] options need role = "gemeente" or "node"')
        return StufConfig()
    if role not in STUF_ROLES:
        raise ConfigError(f"[stuf] role must be one of {', '.join(STUF_ROLES)}")
    gemeenten = _municipalities(table.get("gemeente", []), ctx)
    values = read_options(StufConfig, table, ctx)
    _codes(values.get("gemeentecodes", ()), ctx.where)
    config = StufConfig(**values, gemeenten=gemeenten)
    if role == "gemeente" and (not config.cpa_id or not config.gemeentecodes):
        raise ConfigError("[stuf] role gemeente needs cpa_id and gemeentecodes")
    if role == "node" and not config.gemeenten:
        raise ConfigError("[stuf] role node needs at least one [[stuf.gemeente]]")
    if role == "node" and len({g.cpa_id for g in gemeenten}) != len(gemeenten):
        raise ConfigError("[[stuf.gemeente]] cpa_ids must be unique")
    return config


def _as_is(value: Any, key: str, ctx: Context) -> Any:
    return value  # read by _municipalities


#: ``[[stuf.gemeente]]`` is a sub-table of ``[stuf]``: declared for the reference.
_GEMEENTE = Declared(
    "gemeenten",
    "gemeente",
    Option(
        "node role: one [[stuf.gemeente]] table per municipality (cpa_id, gemeentecodes, "
        "releases).",
        Kind("array of tables", _as_is),
    ),
    (),
)

register(Section("stuf", StufConfig, "stuf", _read_stuf, order=11, extra=(_GEMEENTE,)))
