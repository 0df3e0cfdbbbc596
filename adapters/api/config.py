"""``[api]``: the back-office API listener, declared once (gateway/settings/options.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.settings.listeners import (
    LISTEN,
    SECURITY_KIND,
    is_loopback,
    listen_given,
    listener_security,
)
from gateway.settings.options import (
    NOT_NEGATIVE,
    POSITIVE,
    Bound,
    ConfigError,
    Context,
    at_least,
    option,
    read_options,
)
from gateway.settings.registry import Section, register

_POSITIVE = "[api] max_request_bytes and wait_timeout must be positive"


@dataclass(frozen=True)
class ApiConfig:
    """``[api]``: the back-office API (REST ``/service/rest/v19``, SOAP ``/service/...``).

    ``port`` None means off.  HTTPS when ``certificate`` and ``key`` are set;
    mutual TLS when ``client_ca`` is set too (clients must present a
    certificate chaining to it); HTTP Basic when ``users_file`` is set (lines
    ``name:hash`` as ``dkgw api hash-password`` prints them).  A listener off
    loopback without either is refused unless ``allow_unauthenticated`` says so:
    the API hands out citizens' data.
    """

    host: str = "127.0.0.1"
    port: int | None = option(
        None,
        'HOST:PORT of the listener (docs/api.md); "" turns it off.',
        name="listen",
        kind=LISTEN,
    )
    certificate: Path | None = option(None, "HTTPS with this certificate...", kind=SECURITY_KIND)
    key: Path | None = option(None, "...and this key.", kind=SECURITY_KIND)
    client_ca: Path | None = option(
        None, "Mutual TLS: clients' certificates must chain to these CAs.", kind=SECURITY_KIND
    )
    users_file: Path | None = option(
        None, "HTTP Basic: lines made with `dkgw api hash-password NAME`.", kind=SECURITY_KIND
    )
    allow_unauthenticated: bool = option(
        False, "Serve an unauthenticated API off loopback anyway (behind a proxy)."
    )
    max_request_bytes: int = option(
        150 * 1024 * 1024,
        "The largest request body (payloads travel base64-encoded).",
        bound=Bound(lambda v: v >= 1024, "at least 1024"),
        refusal=_POSITIVE,
    )
    wait_timeout: float = option(
        30.0,
        "Seconds ping and getMessageStatus wait for the partner's answer.",
        bound=POSITIVE,
        refusal=_POSITIVE,
    )
    #: Slow-client deadlines and connection cap of this listener (as ``[http]``).
    header_timeout: float = option(
        20.0, "Seconds for the TLS handshake, request line and headers.", bound=POSITIVE
    )
    min_body_rate: int = option(
        4096, "Body bytes a second at least, over [http] body_rate_window.", bound=NOT_NEGATIVE
    )
    max_connections: int = option(128, "Open connections at most.", bound=at_least(1))

    @property
    def tls(self) -> bool:
        """Whether the listener speaks HTTPS."""
        return self.certificate is not None


def _read_api(table: Mapping[str, Any], ctx: Context, _: Mapping[str, Any]) -> ApiConfig:
    if not listen_given(table, ctx):
        return ApiConfig()
    values = read_options(ApiConfig, table, ctx)
    listener_security(values, ctx.where)
    config = ApiConfig(**values)
    authenticated = config.client_ca is not None or config.users_file is not None
    if not authenticated and not is_loopback(config.host) and not config.allow_unauthenticated:
        raise ConfigError(
            f"[api] listen {table['listen']!r} is not loopback: set users_file or client_ca, "
            "or allow_unauthenticated = true"
        )
    return config


register(Section("api", ApiConfig, "api", _read_api, order=8))
