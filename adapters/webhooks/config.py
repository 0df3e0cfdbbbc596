"""``[[webhook]]``: event push to back offices, declared once (gateway/settings/options.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.msh.states import EventType
from gateway.settings.options import (
    EXISTING_PATH,
    POSITIVE,
    STR,
    ConfigError,
    Context,
    option,
    read_options,
)
from gateway.settings.registry import Section, register

EVENT_TYPES = tuple(e.value for e in EventType)

_POSITIVE = "{where} timeout, initial_backoff and max_age must be positive"


@dataclass(frozen=True)
class WebhookConfig:
    """``[[webhook]]``: POST each matching message event's JSON to ``url`` (docs/webhooks.md).

    Empty ``cpa_ids``/``services`` match all; ``event_types`` defaults to all
    four.  Deliveries are retried with exponential backoff (``initial_backoff``
    doubling up to ``max_backoff``) until ``max_age`` has passed, then marked
    failed.  With ``secret_file`` each POST carries an HMAC-SHA256 of its body.
    """

    name: str = option(
        help="Names the hook in logs and metrics.", kind=STR, default_text="webhook-N"
    )
    url: str = option(help="Where events are POSTed: an http:// or https:// URL.", kind=STR)
    cpa_ids: tuple[str, ...] = option((), "Only events of these CPAs; [] for all.")
    services: tuple[str, ...] = option((), 'Only these services ("type:value"); [] for all.')
    event_types: tuple[str, ...] = option(EVENT_TYPES, "Only these event types; [] for all four.")
    secret_file: Path | None = option(
        None, "A shared secret: each POST carries an HMAC-SHA256 of its body.", kind=EXISTING_PATH
    )
    ca_file: Path | None = option(
        None,
        "CAs to verify the back office's HTTPS certificate; none: the system's.",
        kind=EXISTING_PATH,
    )
    timeout: float = option(10.0, "Seconds per POST.", bound=POSITIVE, refusal=_POSITIVE)
    initial_backoff: float = option(
        5.0, "Seconds before the first retry, doubling.", bound=POSITIVE, refusal=_POSITIVE
    )
    max_backoff: float = option(900.0, "The longest wait between retries, in seconds.")
    max_age: float = option(
        86400.0,
        "An event not delivered within this many seconds is given up (and logged).",
        bound=POSITIVE,
        refusal=_POSITIVE,
    )


def _read_webhooks(
    entries: list[dict[str, Any]], ctx: Context, _: Mapping[str, Any]
) -> tuple[WebhookConfig, ...]:
    hooks = []
    for n, entry in enumerate(entries, 1):
        where = f"[[webhook]] #{n}"
        entry_ctx = Context(where, ctx.base)
        url = STR.read(entry.get("url", ""), "url", entry_ctx)
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where} url must be an http:// or https:// URL")
        name = STR.read(entry.get("name", f"webhook-{n}"), "name", entry_ctx)
        values = read_options(WebhookConfig, entry, entry_ctx)
        unknown = set(values.get("event_types", ())) - set(EVENT_TYPES)
        if unknown:
            raise ConfigError(f"{where} event_types: unknown {', '.join(sorted(unknown))}")
        hook = WebhookConfig(**{**values, "name": name, "url": url})
        if hook.max_backoff < hook.initial_backoff:
            raise ConfigError(f"{where} max_backoff must be at least initial_backoff")
        hooks.append(hook)
    names = [h.name for h in hooks]
    if len(set(names)) != len(names):
        raise ConfigError("[[webhook]] names must be unique")
    return tuple(hooks)


register(Section("webhook", WebhookConfig, "webhooks", _read_webhooks, array=True, order=9))
