"""The gateway's own sections: ``[gateway]``, ``[http]``, ``[tls]``, ``[delivery]``,
``[monitoring]``, ``[admin]``, ``[logging]`` and ``[retention]``.

Each is declared once, as a frozen dataclass whose fields carry default, kind,
bounds and help (:mod:`gateway.settings.options`); ``[security]`` is in
:mod:`gateway.settings.security`, the adapters' sections in their packages.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpa.model import parse_party
from gateway.settings.listeners import (
    LISTEN,
    SECURITY_KIND,
    listen_given,
    listener_security,
)
from gateway.settings.options import (
    NOT_NEGATIVE,
    POSITIVE,
    ConfigError,
    Context,
    Kind,
    at_least,
    fraction,
    one_of,
    option,
    read_options,
)
from gateway.settings.registry import Section, register
from gateway.store.retention import RetentionSettings

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


def _party_ids(value: Any, key: str, ctx: Context) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise ConfigError("[gateway] party_ids must be a list of type:value strings")
    return tuple(value)


@dataclass(frozen=True)
class GatewaySection:
    """``[gateway]``: where the state is and whom this gateway answers for.

    Its values are fields of :class:`gateway.config.GatewayConfig` itself.
    """

    data_dir: str = option("var", "State: the SQLite store and spooled payloads.")
    store: str = option(
        "",
        "The store URL: sqlite:///FILE, or postgresql://... shared by several nodes.",
        default_text='SQLite in data_dir ("sqlite:///DATA_DIR/gateway.sqlite3")',
    )
    node_id: str = option(
        "", "Names this node in task leases, ping results and logs.", default_text="the host name"
    )
    party_ids: tuple[str, ...] = option(
        (),
        "The party ids this gateway answers for (type:value); empty: any party of a stored CPA.",
        kind=Kind("list of party ids", _party_ids),
    )


def _read_gateway(table: Mapping[str, Any], ctx: Context, _: Mapping[str, Any]) -> dict[str, Any]:
    values = read_options(GatewaySection, table, ctx)
    data_dir = (ctx.base / values.get("data_dir", GatewaySection.data_dir)).resolve()
    return {
        "data_dir": data_dir,
        "store": values.get("store", f"sqlite:///{data_dir / 'gateway.sqlite3'}"),
        "node_id": values.get("node_id", socket.gethostname()),
        "party_ids": tuple(parse_party(p) for p in values.get("party_ids", ())),
    }


@dataclass(frozen=True)
class HttpConfig:
    """``[http]``: the ebMS endpoint partners reach over mutual TLS (the CPA's endpoint URL)."""

    host: str = "0.0.0.0"  # noqa: S104 - a gateway listens for its partners
    port: int = option(443, "HOST:PORT the endpoint listens on.", name="listen", kind=LISTEN)
    path: str = option("/ebms", "The endpoint's path.")
    max_request_bytes: int = option(
        100 * 1024 * 1024, "Larger requests are refused with 413 while they arrive."
    )
    idle_timeout: float = option(
        30.0, "A connection silent this many seconds is closed.", bound=POSITIVE
    )
    #: TLS handshake, request line and headers must be in within this many
    #: seconds of the connection's start (gateway/http/deadlines.py).
    header_timeout: float = option(
        20.0,
        "Seconds for the TLS handshake, request line and headers (else 408 or a close).",
        bound=POSITIVE,
    )
    #: After the headers, at least this many body bytes a second, averaged over
    #: ``body_rate_window`` seconds (docs/operations.md, "Slow clients"); 0: off.
    min_body_rate: int = option(
        4096, "Body bytes a second at least, over body_rate_window (else 408).", bound=NOT_NEGATIVE
    )
    body_rate_window: float = option(
        20.0,
        "Seconds the body rate is averaged over; the API and admin listeners use it too.",
        bound=POSITIVE,
    )
    #: Open connections at most; a new one over this is closed at once.
    max_connections: int = option(512, "Open connections at most.", bound=at_least(1))


def _read_http(table: Mapping[str, Any], ctx: Context, _: Mapping[str, Any]) -> HttpConfig:
    config = HttpConfig(**read_options(HttpConfig, table, ctx))
    if not config.path.startswith("/"):
        raise ConfigError("[http] path must start with /")
    return config


def _tls_file(value: Any, key: str, ctx: Context) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"[tls] {key} must be a file path")
    return (ctx.base / value).resolve()


#: A PEM file of ``[tls]``: a non-empty path.
TLS_FILE = Kind("path", _tls_file)


@dataclass(frozen=True)
class TlsConfig:
    """``[tls]``: our certificates and keys (PEM files) and whom we trust."""

    certificate: Path = option(help="Our server certificate for the endpoint.", kind=TLS_FILE)
    key: Path = option(help="Its private key (unencrypted, readable by dkgw only).", kind=TLS_FILE)
    client_certificate: Path = option(
        help="Our client certificate for sending; the CPA names it.", kind=TLS_FILE
    )
    client_key: Path = option(help="Its private key.", kind=TLS_FILE)
    trust_anchors: Path = option(
        help="The roots we trust for partners' certificates (a file or a directory).",
        kind=TLS_FILE,
    )
    chain: Path | None = option(
        None, "Intermediates sent with our certificates.", kind=TLS_FILE, default_text="none"
    )


_TLS_REQUIRED = ("certificate", "key", "client_certificate", "client_key", "trust_anchors")


def _read_tls(table: Mapping[str, Any], ctx: Context, _: Mapping[str, Any]) -> TlsConfig:
    missing = set(_TLS_REQUIRED) - set(table)
    if missing:
        raise ConfigError(f"[tls] needs {', '.join(sorted(missing))}")
    config = TlsConfig(**read_options(TlsConfig, table, ctx))
    for name in _TLS_REQUIRED:
        target: Path = getattr(config, name)
        if not target.exists():
            raise ConfigError(f"[tls] {name}: {target} does not exist")
    return config


_DELIVERY_POSITIVE = "[delivery] concurrency and poll_interval must be positive"


@dataclass(frozen=True)
class DeliveryConfig:
    """``[delivery]``: the delivery worker."""

    poll_interval: float = option(
        1.0,
        "Seconds between looks for due work when nothing wakes the worker.",
        bound=POSITIVE,
        refusal=_DELIVERY_POSITIVE,
    )
    concurrency: int = option(
        8,
        "Attempts in flight at once, and kept-alive connections per partner.",
        bound=at_least(1),
        refusal=_DELIVERY_POSITIVE,
    )
    connect_timeout: float = option(30.0, "Seconds to connect to a partner.")
    read_timeout: float = option(
        30.0, "Seconds a partner has for the response headers, and again for the body."
    )
    lease_seconds: float = option(
        300.0, "A node that dies mid-attempt leaves its claim; others take over after this."
    )


_PING_POSITIVE = "[monitoring] ping_interval and ping_timeout must be positive"


@dataclass(frozen=True)
class MonitoringConfig:
    """``[monitoring]``: scheduled Pings (see :class:`gateway.monitor.pinger.PingSettings`)."""

    pings: bool = option(True, "Ping the partner of every active CPA (ebMS 2.0 §8).")
    ping_interval: float = option(
        300.0,
        "Seconds between Pings on one link, varied by up to ping_jitter.",
        bound=POSITIVE,
        refusal=_PING_POSITIVE,
    )
    ping_timeout: float = option(
        30.0,
        "No Pong within this many seconds: the link counts as down.",
        bound=POSITIVE,
        refusal=_PING_POSITIVE,
    )
    ping_jitter: float = option(
        0.1, "The spread: each interval varies by up to this fraction.", bound=fraction()
    )
    ping_history_days: int = option(30, "Ping results are kept this many days.", bound=at_least(1))


_READY = "[admin] ready_min_free_mb must be >= 0, ready_store_timeout positive"


@dataclass(frozen=True)
class AdminConfig:
    """``[admin]``: the operator's listener for /metrics, /status, /health and /ready.

    ``port`` None means off.  Plain HTTP on loopback by default.  Like ``[api]``:
    HTTPS with ``certificate`` and ``key``, mutual TLS with ``client_ca``, HTTP
    Basic with ``users_file`` (Prometheus has ``basic_auth`` and ``tls_config``
    for these).
    """

    host: str = "127.0.0.1"
    port: int | None = option(
        None, 'HOST:PORT of the listener; "" turns it off.', name="listen", kind=LISTEN
    )
    certificate: Path | None = option(None, "HTTPS with this certificate...", kind=SECURITY_KIND)
    key: Path | None = option(None, "...and this key.", kind=SECURITY_KIND)
    client_ca: Path | None = option(
        None, "Mutual TLS: scrapers' certificates must chain to these CAs.", kind=SECURITY_KIND
    )
    users_file: Path | None = option(
        None, "HTTP Basic: lines made with `dkgw api hash-password NAME`.", kind=SECURITY_KIND
    )
    #: ``/ready`` says "not ready" below this much free space in ``data_dir``.
    ready_min_free_mb: int = option(
        100,
        "/ready says not ready below this much free space (MiB) in data_dir.",
        bound=at_least(0),
        refusal=_READY,
    )
    #: ``/ready`` says "not ready" when the store takes longer than this to answer.
    ready_store_timeout: float = option(
        2.0,
        "/ready says not ready when the store takes longer than this (seconds).",
        bound=POSITIVE,
        refusal=_READY,
    )
    #: Slow-client deadline and connection cap of this listener (as ``[http]``).
    header_timeout: float = option(
        20.0, "Seconds for the request line and headers.", bound=POSITIVE
    )
    max_connections: int = option(32, "Open connections at most.", bound=at_least(1))


def _read_admin(table: Mapping[str, Any], ctx: Context, _: Mapping[str, Any]) -> AdminConfig:
    if not listen_given(table, ctx):
        return AdminConfig()
    values = read_options(AdminConfig, table, ctx)
    listener_security(values, ctx.where)
    return AdminConfig(**values)


@dataclass(frozen=True)
class LoggingConfig:
    """``[logging]``: log output, ``text`` lines or ``json`` objects, one per line."""

    format: str = option(
        "text", "text for people, json for log shippers.", bound=one_of(LOG_FORMATS)
    )
    level: str = option("info", "The least severe level logged.", bound=one_of(LOG_LEVELS))


def _plain(cls: type) -> Any:
    def read(table: Mapping[str, Any], ctx: Context, _: Mapping[str, Any]) -> Any:
        return cls(**read_options(cls, table, ctx))

    return read


# The order is the order of reading (and so of which error is reported first).
register(Section("gateway", GatewaySection, None, _read_gateway, order=0))
register(Section("http", HttpConfig, "http", _read_http, order=1))
register(Section("tls", TlsConfig, "tls", _read_tls, order=2))
register(Section("delivery", DeliveryConfig, "delivery", _plain(DeliveryConfig), order=3))
register(Section("monitoring", MonitoringConfig, "monitoring", _plain(MonitoringConfig), order=4))
register(Section("admin", AdminConfig, "admin", _read_admin, order=5))
register(Section("logging", LoggingConfig, "logging", _plain(LoggingConfig), order=6))
register(Section("retention", RetentionSettings, "retention", _plain(RetentionSettings), order=20))
