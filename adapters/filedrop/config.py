"""``[[filedrop]]``: folder exchanges, declared once (gateway/settings/options.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpa.model import parse_party
from gateway.settings.options import (
    PATH,
    POSITIVE,
    STR,
    ConfigError,
    Context,
    at_least,
    option,
    read_options,
)
from gateway.settings.registry import Section, register

_POSITIVE = "{where} poll_interval and max_file_bytes must be positive"


@dataclass(frozen=True)
class FileDropConfig:
    """``[[filedrop]]``: a folder exchange, outbox and inbox (docs/filedrop.md).

    The outbox folder is sent with fixed ebMS properties, the inbox folder
    receives matching messages.  Either folder may be left out.  The inbox takes
    the received messages of ``cpa_id`` with this ``service`` and, when
    ``inbox_actions`` is not empty, one of those actions (default: any action of
    the service).
    """

    name: str = option(help="Names the exchange: letters, digits, - and _.", kind=STR)
    cpa_id: str = option(help="The CPA of the exchange.", kind=STR)
    service: str = option(help='The CPA service ("type:value") sent and received.', kind=STR)
    action: str = option("", "Outbox: the action files are sent as.")
    from_party: str = option("", "Outbox: our party id (type:value).")
    from_role: str = option("", "Outbox: our role.")
    to_party: str = option("", "Outbox: the partner's party id (type:value).")
    to_role: str = option("", "Outbox: the partner's role.")
    content_type: str = option("application/xml", "The MIME type outbox files are sent with.")
    outbox: Path | None = option(None, "Files renamed into this folder are sent.", kind=PATH)
    inbox: Path | None = option(
        None, "Received messages land here, with a JSON sidecar.", kind=PATH
    )
    inbox_actions: tuple[str, ...] = option(
        (), "Received actions that go to the inbox; [] for every action of the service."
    )
    poll_interval: float = option(
        2.0, "Seconds between looks at the outbox and the store.", bound=POSITIVE, refusal=_POSITIVE
    )
    max_file_bytes: int = option(
        100 * 1024 * 1024, "The largest file sent.", bound=at_least(1), refusal=_POSITIVE
    )


_OUTBOX_NEEDS = ("action", "from_party", "from_role", "to_party", "to_role")


def _read_filedrops(
    entries: list[dict[str, Any]], ctx: Context, _: Mapping[str, Any]
) -> tuple[FileDropConfig, ...]:
    drops = []
    for n, entry in enumerate(entries, 1):
        name = STR.read(entry.get("name", ""), "name", Context(f"[[filedrop]] #{n}", ctx.base))
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"[[filedrop]] #{n} needs a name of letters, digits, - and _")
        where = f"[[filedrop]] {name}"
        values = read_options(FileDropConfig, entry, Context(where, ctx.base))
        if not values.get("cpa_id") or not values.get("service"):
            raise ConfigError(f"{where} needs cpa_id and service")
        drop = FileDropConfig(**values)
        if drop.outbox is None and drop.inbox is None:
            raise ConfigError(f"{where} needs an outbox, an inbox or both")
        if drop.outbox is not None:
            missing = [k for k in _OUTBOX_NEEDS if not getattr(drop, k)]
            if missing:
                raise ConfigError(f"{where} outbox needs {', '.join(missing)}")
            for party in (drop.from_party, drop.to_party):
                try:
                    parse_party(party)
                except ValueError as exc:
                    raise ConfigError(f"{where}: {exc}") from None
        drops.append(drop)
    names = [d.name for d in drops]
    if len(set(names)) != len(names):
        raise ConfigError("[[filedrop]] names must be unique")
    folders = [f for d in drops for f in (d.outbox, d.inbox) if f is not None]
    if len(set(folders)) != len(folders):
        raise ConfigError("[[filedrop]] folders must not be shared between exchanges")
    return tuple(drops)


register(Section("filedrop", FileDropConfig, "filedrops", _read_filedrops, array=True, order=10))
