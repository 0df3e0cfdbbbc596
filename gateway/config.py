"""The gateway's configuration file (TOML) as plain data.

One file per gateway process.  Paths are relative to the file's directory, so a
config and its certificates can move together.  Every option has a default
except the TLS material, and unknown keys are refused: a typo in a security
setting must not silently fall back to a default.

Example::

    [gateway]
    data_dir = "var"                 # state: the SQLite store, spooled payloads
    store = "sqlite:///var/gateway.sqlite3"   # or postgresql://... for several nodes
    node_id = "gw-1"                 # names this node in task leases and logs
    party_ids = ["urn:osb:oin:00000001001234567000"]   # whom we answer for (empty: any)

    [http]
    listen = "0.0.0.0:443"
    path = "/ebms"
    max_request_bytes = 104857600
    idle_timeout = 30.0              # close connections silent this long (slow clients)

    [tls]
    certificate = "certs/tls-server.pem"
    key = "certs/tls-server.key"
    chain = "certs/chain.pem"        # intermediates sent with our certificates
    client_certificate = "certs/tls-client.pem"
    client_key = "certs/tls-client.key"
    trust_anchors = "certs/pkioverheid-private-root.pem"   # file or directory

    [delivery]
    poll_interval = 1.0
    concurrency = 8
    connect_timeout = 30.0
    read_timeout = 30.0

    [monitoring]
    pings = true                     # ping every partner of every active CPA
    ping_interval = 300.0            # seconds between Pings per link (jittered)
    ping_timeout = 30.0              # no Pong within this: the link is down
    ping_jitter = 0.1                # spread: each interval varies by up to 10 %
    ping_history_days = 30

    [admin]
    listen = "127.0.0.1:8080"        # /metrics, /status, /health; "" turns it off

    [logging]
    format = "text"                  # or "json": one JSON object per line
    level = "info"

    [security]                       # XML Signature / Encryption ("-s", "-e" profiles)
    signing_certificate = "certs/signing.pem"
    signing_key = "certs/signing.key"
    encryption_certificate = "certs/encryption.pem"
    encryption_key = "certs/encryption.key"
    crl_dir = "certs/crl"            # plus everything gateway.trust.TrustSettings takes

See ``deploy/example.toml`` for every option with its explanation.
"""

from __future__ import annotations

import socket
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cpa.model import PartyId, parse_party
from gateway.trust import TrustSettings


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or wrong; the text says where."""


@dataclass(frozen=True)
class HttpConfig:
    """The inbound ebMS endpoint."""

    host: str = "0.0.0.0"  # noqa: S104 - a gateway listens for its partners
    port: int = 443
    path: str = "/ebms"
    max_request_bytes: int = 100 * 1024 * 1024
    idle_timeout: float = 30.0


@dataclass(frozen=True)
class TlsConfig:
    """Certificates and keys (PEM files)."""

    certificate: Path
    key: Path
    client_certificate: Path
    client_key: Path
    trust_anchors: Path
    chain: Path | None = None


@dataclass(frozen=True)
class DeliveryConfig:
    """The delivery worker."""

    poll_interval: float = 1.0
    concurrency: int = 8
    connect_timeout: float = 30.0
    read_timeout: float = 30.0
    lease_seconds: float = 300.0


@dataclass(frozen=True)
class MonitoringConfig:
    """Scheduled Pings (see :class:`gateway.monitor.pinger.PingSettings`)."""

    pings: bool = True
    ping_interval: float = 300.0
    ping_timeout: float = 30.0
    ping_jitter: float = 0.1
    ping_history_days: int = 30


@dataclass(frozen=True)
class AdminConfig:
    """The operator's listener for /metrics and /status; ``port`` None means off."""

    host: str = "127.0.0.1"
    port: int | None = None


@dataclass(frozen=True)
class LoggingConfig:
    """Log output: ``text`` lines or ``json`` objects, one per line."""

    format: str = "text"
    level: str = "info"


#: Our own keys in ``[security]``; the other options are :class:`TrustSettings`'.
KEY_OPTIONS = ("signing_certificate", "signing_key", "encryption_certificate", "encryption_key")
TRUST_OPTIONS = (
    "trust_anchors",
    "intermediates",
    "crl_dir",
    "crl_urls",
    "crl_refresh",
    "crl_mode",
    "legacy_crypto",
)


@dataclass(frozen=True)
class SecurityConfig:
    """Message-level security: our signing and encryption keys, and whom we trust.

    The keys are needed only when a CPA asks for signing (``-s``, ``-e``) or
    encryption (``-e``); a gateway without them serves the unsigned profiles.
    ``trust`` decides on partners' signing certificates (research notes §5.3);
    its anchors default to ``[tls] trust_anchors`` and its intermediates to
    ``[tls] chain``.
    """

    trust: TrustSettings = field(default_factory=TrustSettings)
    signing_certificate: Path | None = None
    signing_key: Path | None = None
    encryption_certificate: Path | None = None
    encryption_key: Path | None = None

    @property
    def legacy_crypto(self) -> bool:
        """Admit the legacy algorithms (SHA-1, AES-CBC, RSA v1.5; research notes §10 Q3)."""
        return self.trust.legacy_crypto


@dataclass(frozen=True)
class GatewayConfig:
    """Everything ``dkgw serve`` needs."""

    data_dir: Path
    store: str
    node_id: str
    http: HttpConfig
    tls: TlsConfig
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    party_ids: tuple[PartyId, ...] = ()
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    source: Path | None = None


_SECTIONS = {
    "gateway": {"data_dir", "store", "node_id", "party_ids"},
    "http": {"listen", "path", "max_request_bytes", "idle_timeout"},
    "tls": {"certificate", "key", "chain", "client_certificate", "client_key", "trust_anchors"},
    "delivery": {
        "poll_interval",
        "concurrency",
        "connect_timeout",
        "read_timeout",
        "lease_seconds",
    },
    "monitoring": {"pings", "ping_interval", "ping_timeout", "ping_jitter", "ping_history_days"},
    "admin": {"listen"},
    "logging": {"format", "level"},
    "security": {*KEY_OPTIONS, *TRUST_OPTIONS},
}

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


def _check_keys(data: dict[str, Any]) -> None:
    for section, values in data.items():
        if section not in _SECTIONS:
            raise ConfigError(f"unknown section [{section}]")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table")
        for key in values:
            if key not in _SECTIONS[section]:
                raise ConfigError(f"unknown option {key!r} in [{section}]")


def _listen(value: str, section: str = "http") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"[{section}] listen must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104


def _typed(section: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = section.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise ConfigError(f"option {key!r} must be {kind.__name__}, got {value!r}")
    return value


def load_config(path: Path) -> GatewayConfig:
    """Read and check a TOML config; raises :class:`ConfigError`."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    _check_keys(data)
    base = path.resolve().parent

    def rel(value: Any, name: str) -> Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"[tls] {name} must be a file path")
        return (base / value).resolve()

    gw, http, tls, delivery = (data.get(s, {}) for s in ("gateway", "http", "tls", "delivery"))
    data_dir = (base / _typed(gw, "data_dir", str, "var")).resolve()
    store = _typed(gw, "store", str, f"sqlite:///{data_dir / 'gateway.sqlite3'}")
    host, port = _listen(_typed(http, "listen", str, "0.0.0.0:443"))
    http_path = _typed(http, "path", str, "/ebms")
    if not http_path.startswith("/"):
        raise ConfigError("[http] path must start with /")
    missing = {"certificate", "key", "client_certificate", "client_key", "trust_anchors"} - set(tls)
    if missing:
        raise ConfigError(f"[tls] needs {', '.join(sorted(missing))}")
    tls_chain = rel(tls["chain"], "chain") if "chain" in tls else None
    party_ids = gw.get("party_ids", [])
    if not isinstance(party_ids, list) or not all(isinstance(p, str) and p for p in party_ids):
        raise ConfigError("[gateway] party_ids must be a list of type:value strings")
    config = GatewayConfig(
        party_ids=tuple(parse_party(p) for p in party_ids),
        data_dir=data_dir,
        store=store,
        node_id=_typed(gw, "node_id", str, socket.gethostname()),
        http=HttpConfig(
            host=host,
            port=port,
            path=http_path,
            max_request_bytes=_typed(http, "max_request_bytes", int, HttpConfig.max_request_bytes),
            idle_timeout=_typed(http, "idle_timeout", float, HttpConfig.idle_timeout),
        ),
        tls=TlsConfig(
            certificate=rel(tls["certificate"], "certificate"),
            key=rel(tls["key"], "key"),
            client_certificate=rel(tls["client_certificate"], "client_certificate"),
            client_key=rel(tls["client_key"], "client_key"),
            trust_anchors=rel(tls["trust_anchors"], "trust_anchors"),
            chain=tls_chain,
        ),
        delivery=DeliveryConfig(
            poll_interval=_typed(delivery, "poll_interval", float, 1.0),
            concurrency=_typed(delivery, "concurrency", int, 8),
            connect_timeout=_typed(delivery, "connect_timeout", float, 30.0),
            read_timeout=_typed(delivery, "read_timeout", float, 30.0),
            lease_seconds=_typed(delivery, "lease_seconds", float, 300.0),
        ),
        monitoring=_monitoring(data.get("monitoring", {})),
        admin=_admin(data.get("admin", {})),
        logging=_logging(data.get("logging", {})),
        security=_security(data.get("security", {}), base, tls_chain),
        source=path.resolve(),
    )
    for name in ("certificate", "key", "client_certificate", "client_key", "trust_anchors"):
        target: Path = getattr(config.tls, name)
        if not target.exists():
            raise ConfigError(f"[tls] {name}: {target} does not exist")
    if config.delivery.concurrency < 1 or config.delivery.poll_interval <= 0:
        raise ConfigError("[delivery] concurrency and poll_interval must be positive")
    if config.http.idle_timeout <= 0:
        raise ConfigError("[http] idle_timeout must be positive")
    return config


def _monitoring(section: dict[str, Any]) -> MonitoringConfig:
    config = MonitoringConfig(
        pings=_typed(section, "pings", bool, True),
        ping_interval=_typed(section, "ping_interval", float, 300.0),
        ping_timeout=_typed(section, "ping_timeout", float, 30.0),
        ping_jitter=_typed(section, "ping_jitter", float, 0.1),
        ping_history_days=_typed(section, "ping_history_days", int, 30),
    )
    if config.ping_interval <= 0 or config.ping_timeout <= 0:
        raise ConfigError("[monitoring] ping_interval and ping_timeout must be positive")
    if not 0 <= config.ping_jitter < 1:
        raise ConfigError("[monitoring] ping_jitter must be at least 0 and below 1")
    if config.ping_history_days < 1:
        raise ConfigError("[monitoring] ping_history_days must be at least 1")
    return config


def _admin(section: dict[str, Any]) -> AdminConfig:
    listen = _typed(section, "listen", str, "")
    if not listen:
        return AdminConfig()
    host, port = _listen(listen, "admin")
    return AdminConfig(host=host, port=port)


def _logging(section: dict[str, Any]) -> LoggingConfig:
    config = LoggingConfig(
        format=_typed(section, "format", str, "text"), level=_typed(section, "level", str, "info")
    )
    if config.format not in LOG_FORMATS:
        raise ConfigError(f"[logging] format must be one of {', '.join(LOG_FORMATS)}")
    if config.level not in LOG_LEVELS:
        raise ConfigError(f"[logging] level must be one of {', '.join(LOG_LEVELS)}")
    return config


def _security(section: dict[str, Any], base: Path, tls_chain: Path | None) -> SecurityConfig:
    try:
        trust = TrustSettings.from_table(
            {k: v for k, v in section.items() if k in TRUST_OPTIONS}, base_dir=base
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not trust.intermediates and tls_chain is not None:
        # The CAs we chain our TLS certificates to usually issued the partners' too.
        trust = replace(trust, intermediates=(tls_chain,))
    paths: dict[str, Path | None] = {}
    for key in KEY_OPTIONS:
        value = section.get(key)
        if value is None:
            paths[key] = None
            continue
        if not isinstance(value, str) or not value:
            raise ConfigError(f"[security] {key} must be a file path")
        target = (base / value).resolve()
        if not target.is_file():
            raise ConfigError(f"[security] {key}: {target} does not exist")
        paths[key] = target
    for what in ("signing", "encryption"):
        if (paths[f"{what}_certificate"] is None) != (paths[f"{what}_key"] is None):
            raise ConfigError(f"[security] {what}_certificate and {what}_key go together")
    for key in ("trust_anchors", "intermediates"):
        for target in getattr(trust, key):
            if not target.exists():
                raise ConfigError(f"[security] {key}: {target} does not exist")
    if trust.crl_dir is not None and not trust.crl_dir.is_dir():
        raise ConfigError(f"[security] crl_dir: {trust.crl_dir} is not a directory")
    return SecurityConfig(trust=trust, **paths)
