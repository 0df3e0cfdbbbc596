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
    header_timeout = 20.0            # TLS handshake + request line + headers within this
    min_body_rate = 4096             # body bytes/s at least, averaged over body_rate_window

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

import re
import socket
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cpa.model import PartyId, parse_party
from gateway.errors import OperatorError
from gateway.store.retention import RetentionSettings
from gateway.trust import TrustSettings


class ConfigError(OperatorError, ValueError):
    """The configuration file is missing, unreadable or wrong; the text says where."""


@dataclass(frozen=True)
class HttpConfig:
    """The inbound ebMS endpoint."""

    host: str = "0.0.0.0"  # noqa: S104 - a gateway listens for its partners
    port: int = 443
    path: str = "/ebms"
    max_request_bytes: int = 100 * 1024 * 1024
    idle_timeout: float = 30.0
    #: TLS handshake, request line and headers must be in within this many
    #: seconds of the connection's start (gateway/http/deadlines.py).
    header_timeout: float = 20.0
    #: After the headers, at least this many body bytes a second, averaged over
    #: ``body_rate_window`` seconds (docs/operations.md, "Slow clients"); 0: off.
    min_body_rate: int = 4096
    body_rate_window: float = 20.0
    #: Open connections at most; a new one over this is closed at once.
    max_connections: int = 512


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
    """The operator's listener for /metrics and /status; ``port`` None means off.

    Plain HTTP on loopback by default.  Like ``[api]``: HTTPS with ``certificate``
    and ``key``, mutual TLS with ``client_ca``, HTTP Basic with ``users_file``
    (Prometheus has ``basic_auth`` and ``tls_config`` for these).
    """

    host: str = "127.0.0.1"
    port: int | None = None
    certificate: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None
    users_file: Path | None = None
    #: ``/ready`` says "not ready" below this much free space in ``data_dir``.
    ready_min_free_mb: int = 100
    #: ``/ready`` says "not ready" when the store takes longer than this to answer.
    ready_store_timeout: float = 2.0
    #: Slow-client deadline and connection cap of this listener (as ``[http]``).
    header_timeout: float = 20.0
    max_connections: int = 32


@dataclass(frozen=True)
class ApiConfig:
    """The back-office API listener (REST ``/service/rest/v19``, SOAP ``/service/...``).

    ``port`` None means off.  HTTPS when ``certificate`` and ``key`` are set;
    mutual TLS when ``client_ca`` is set too (clients must present a
    certificate chaining to it); HTTP Basic when ``users_file`` is set (lines
    ``name:hash`` as ``dkgw api hash-password`` prints them).  A listener off
    loopback without either is refused unless ``allow_unauthenticated`` says so:
    the API hands out citizens' data.
    """

    host: str = "127.0.0.1"
    port: int | None = None
    certificate: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None
    users_file: Path | None = None
    allow_unauthenticated: bool = False
    max_request_bytes: int = 150 * 1024 * 1024
    wait_timeout: float = 30.0  # ping and getMessageStatus wait this long for the answer
    #: Slow-client deadlines and connection cap of this listener (as ``[http]``).
    header_timeout: float = 20.0
    min_body_rate: int = 4096
    max_connections: int = 128

    @property
    def tls(self) -> bool:
        """Whether the listener speaks HTTPS."""
        return self.certificate is not None


EVENT_TYPES = ("RECEIVED", "DELIVERED", "FAILED", "EXPIRED")


@dataclass(frozen=True)
class WebhookConfig:
    """One ``[[webhook]]``: POST each matching message event's JSON to ``url``.

    Empty ``cpa_ids``/``services`` match all; ``event_types`` defaults to all
    four.  Deliveries are retried with exponential backoff (``initial_backoff``
    doubling up to ``max_backoff``) until ``max_age`` has passed, then marked
    failed.  With ``secret_file`` each POST carries an HMAC-SHA256 of its body.
    """

    name: str
    url: str
    cpa_ids: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    event_types: tuple[str, ...] = EVENT_TYPES
    secret_file: Path | None = None
    ca_file: Path | None = None
    timeout: float = 10.0
    initial_backoff: float = 5.0
    max_backoff: float = 900.0
    max_age: float = 86400.0


@dataclass(frozen=True)
class FileDropConfig:
    """One ``[[filedrop]]`` exchange: an outbox folder sent with fixed ebMS properties
    and an inbox folder that receives matching messages.

    Either folder may be left out.  The inbox takes the received messages of
    ``cpa_id`` with this ``service`` and, when ``inbox_actions`` is not empty,
    one of those actions (default: any action of the service).
    """

    name: str
    cpa_id: str
    service: str
    action: str = ""
    from_party: str = ""
    from_role: str = ""
    to_party: str = ""
    to_role: str = ""
    content_type: str = "application/xml"
    outbox: Path | None = None
    inbox: Path | None = None
    inbox_actions: tuple[str, ...] = ()
    poll_interval: float = 2.0
    max_file_bytes: int = 100 * 1024 * 1024


STUF_ROLES = ("gemeente", "node")


@dataclass(frozen=True)
class StufMunicipality:
    """A municipality connected to the node: its CPA and the gemeentecodes it answers for."""

    cpa_id: str
    gemeentecodes: tuple[str, ...]
    #: iStandaarden releases this municipality sends ("" none: ``[stuf] releases``),
    #: as the node's per-exchange StUF version setting selects them.
    releases: tuple[str, ...] = ()


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

    role: str = ""
    cpa_id: str = ""
    gemeentecodes: tuple[str, ...] = ()
    applicatie: str = "dkgw"
    applicatie_versie: str = "0001"
    applicatie_subversie: str = "0000"
    releases: tuple[str, ...] = ("3.2",)
    max_envelope_bytes: int = 25 * 1024 * 1024
    require_payload_schema: bool = False
    services: tuple[tuple[str, str], ...] = (
        ("iwmo", "urn:osb:services:GGK:iWmo:3.2"),
        ("ijw", "urn:osb:services:GGK:iJw:3.2"),
        ("ieb", "urn:osb:services:GGK:iEb:1.0"),
    )
    actions: tuple[tuple[str, str], ...] = ()
    gemeenten: tuple[StufMunicipality, ...] = ()
    outbox: Path | None = None
    inbox: Path | None = None
    provider_outbox: Path | None = None
    provider_inbox: Path | None = None
    read_retention_hours: float = 168.0
    max_age_days: int = 90
    poll_interval: float = 1.0

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
    ``trust`` decides on partners' signing certificates (ebMS 2.0 §4.1; docs/security.md);
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
        """Admit the legacy algorithms (SHA-1, AES-CBC, RSA v1.5; docs/security.md)."""
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
    api: ApiConfig = field(default_factory=ApiConfig)
    webhooks: tuple[WebhookConfig, ...] = ()
    filedrops: tuple[FileDropConfig, ...] = ()
    stuf: StufConfig = field(default_factory=StufConfig)
    source: Path | None = None
    retention: RetentionSettings = field(default_factory=RetentionSettings)


_SECTIONS = {
    "gateway": {"data_dir", "store", "node_id", "party_ids"},
    "http": {
        "listen",
        "path",
        "max_request_bytes",
        "idle_timeout",
        "header_timeout",
        "min_body_rate",
        "body_rate_window",
        "max_connections",
    },
    "tls": {"certificate", "key", "chain", "client_certificate", "client_key", "trust_anchors"},
    "delivery": {
        "poll_interval",
        "concurrency",
        "connect_timeout",
        "read_timeout",
        "lease_seconds",
    },
    "monitoring": {"pings", "ping_interval", "ping_timeout", "ping_jitter", "ping_history_days"},
    "admin": {
        "listen",
        "certificate",
        "key",
        "client_ca",
        "users_file",
        "ready_min_free_mb",
        "ready_store_timeout",
        "header_timeout",
        "max_connections",
    },
    "logging": {"format", "level"},
    "security": {*KEY_OPTIONS, *TRUST_OPTIONS},
    "api": {
        "listen",
        "certificate",
        "key",
        "client_ca",
        "users_file",
        "allow_unauthenticated",
        "max_request_bytes",
        "wait_timeout",
        "header_timeout",
        "min_body_rate",
        "max_connections",
    },
    "webhook": {
        "name",
        "url",
        "cpa_ids",
        "services",
        "event_types",
        "secret_file",
        "ca_file",
        "timeout",
        "initial_backoff",
        "max_backoff",
        "max_age",
    },
    "filedrop": {
        "name",
        "cpa_id",
        "service",
        "action",
        "from_party",
        "from_role",
        "to_party",
        "to_role",
        "content_type",
        "outbox",
        "inbox",
        "inbox_actions",
        "poll_interval",
        "max_file_bytes",
    },
    "stuf": {
        "role",
        "cpa_id",
        "gemeentecodes",
        "applicatie",
        "applicatie_versie",
        "applicatie_subversie",
        "releases",
        "max_envelope_bytes",
        "require_payload_schema",
        "services",
        "actions",
        "gemeente",
        "outbox",
        "inbox",
        "provider_outbox",
        "provider_inbox",
        "read_retention_hours",
        "max_age_days",
        "poll_interval",
    },
    "retention": {"messages_days", "webhook_days", "filedrop_days", "batch_size", "interval"},
}

#: Sections written as arrays of tables (``[[webhook]]``), one entry each.
_ARRAY_SECTIONS = ("webhook", "filedrop")

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


def _check_keys(data: dict[str, Any]) -> None:
    for section, values in data.items():
        if section not in _SECTIONS:
            raise ConfigError(f"unknown section [{section}]")
        if section in _ARRAY_SECTIONS:
            if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
                raise ConfigError(f"[[{section}]] must be an array of tables")
            tables = values
        elif not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table")
        else:
            tables = [values]
        for table in tables:
            for key in table:
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
            header_timeout=_typed(http, "header_timeout", float, HttpConfig.header_timeout),
            min_body_rate=_typed(http, "min_body_rate", int, HttpConfig.min_body_rate),
            body_rate_window=_typed(http, "body_rate_window", float, HttpConfig.body_rate_window),
            max_connections=_typed(http, "max_connections", int, HttpConfig.max_connections),
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
        admin=_admin(data.get("admin", {}), base),
        logging=_logging(data.get("logging", {})),
        security=_security(data.get("security", {}), base, tls_chain),
        api=_api(data.get("api", {}), base),
        webhooks=_webhooks(data.get("webhook", []), base),
        filedrops=_filedrops(data.get("filedrop", []), base),
        stuf=_stuf(data.get("stuf", {}), base),
        source=path.resolve(),
        retention=_retention(data.get("retention", {})),
    )
    for name in ("certificate", "key", "client_certificate", "client_key", "trust_anchors"):
        target: Path = getattr(config.tls, name)
        if not target.exists():
            raise ConfigError(f"[tls] {name}: {target} does not exist")
    if config.delivery.concurrency < 1 or config.delivery.poll_interval <= 0:
        raise ConfigError("[delivery] concurrency and poll_interval must be positive")
    if config.http.idle_timeout <= 0:
        raise ConfigError("[http] idle_timeout must be positive")
    _check_deadlines("[http]", config.http)
    return config


def _check_deadlines(where: str, listener: HttpConfig | ApiConfig | AdminConfig) -> None:
    """The slow-client settings of a listener (gateway/http/deadlines.py) make sense."""
    if listener.header_timeout <= 0:
        raise ConfigError(f"{where} header_timeout must be positive")
    if getattr(listener, "min_body_rate", 0) < 0:
        raise ConfigError(f"{where} min_body_rate must be 0 (off) or positive")
    if getattr(listener, "body_rate_window", 1.0) <= 0:
        raise ConfigError(f"{where} body_rate_window must be positive")
    if listener.max_connections < 1:
        raise ConfigError(f"{where} max_connections must be at least 1")


def _retention(section: dict[str, Any]) -> RetentionSettings:
    """``[retention]``: see gateway/store/retention.py and docs/operations.md."""
    defaults = RetentionSettings()
    config = RetentionSettings(
        messages_days=_typed(section, "messages_days", float, defaults.messages_days),
        webhook_days=_typed(section, "webhook_days", float, defaults.webhook_days),
        filedrop_days=_typed(section, "filedrop_days", float, defaults.filedrop_days),
        batch_size=_typed(section, "batch_size", int, defaults.batch_size),
        interval=_typed(section, "interval", float, defaults.interval),
    )
    if min(config.messages_days, config.webhook_days, config.filedrop_days) <= 0:
        raise ConfigError("[retention] messages_days, webhook_days, filedrop_days: positive")
    if config.batch_size < 1 or config.interval <= 0:
        raise ConfigError("[retention] batch_size and interval must be positive")
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


def _admin(section: dict[str, Any], base: Path) -> AdminConfig:
    listen = _typed(section, "listen", str, "")
    if not listen:
        return AdminConfig()
    host, port = _listen(listen, "admin")
    min_free = _typed(section, "ready_min_free_mb", int, AdminConfig.ready_min_free_mb)
    store_timeout = _typed(section, "ready_store_timeout", float, AdminConfig.ready_store_timeout)
    if min_free < 0 or store_timeout <= 0:
        raise ConfigError("[admin] ready_min_free_mb must be >= 0, ready_store_timeout positive")
    config = AdminConfig(
        host=host,
        port=port,
        ready_min_free_mb=min_free,
        ready_store_timeout=store_timeout,
        header_timeout=_typed(section, "header_timeout", float, AdminConfig.header_timeout),
        max_connections=_typed(section, "max_connections", int, AdminConfig.max_connections),
        **_listener_security(section, base, "[admin]"),
    )
    _check_deadlines("[admin]", config)
    return config


def _listener_security(section: dict[str, Any], base: Path, where: str) -> dict[str, Any]:
    """``certificate``, ``key``, ``client_ca`` and ``users_file`` of an HTTP listener."""
    found = {
        name: _existing(section, name, base, where)
        for name in ("certificate", "key", "client_ca", "users_file")
    }
    if (found["certificate"] is None) != (found["key"] is None):
        raise ConfigError(f"{where} certificate and key go together")
    if found["client_ca"] is not None and found["certificate"] is None:
        raise ConfigError(f"{where} client_ca (mutual TLS) needs certificate and key")
    return found


def _path(section: dict[str, Any], key: str, base: Path, where: str) -> Path | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where} {key} must be a file path")
    return (base / value).resolve()


def _existing(section: dict[str, Any], key: str, base: Path, where: str) -> Path | None:
    target = _path(section, key, base, where)
    if target is not None and not target.exists():
        raise ConfigError(f"{where} {key}: {target} does not exist")
    return target


def _strings(section: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = section.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where} {key} must be a list of strings")
    return tuple(value)


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _api(section: dict[str, Any], base: Path) -> ApiConfig:
    listen = _typed(section, "listen", str, "")
    if not listen:
        return ApiConfig()
    host, port = _listen(listen, "api")
    config = ApiConfig(
        host=host,
        port=port,
        **_listener_security(section, base, "[api]"),
        allow_unauthenticated=_typed(section, "allow_unauthenticated", bool, False),
        max_request_bytes=_typed(section, "max_request_bytes", int, ApiConfig.max_request_bytes),
        wait_timeout=_typed(section, "wait_timeout", float, ApiConfig.wait_timeout),
        header_timeout=_typed(section, "header_timeout", float, ApiConfig.header_timeout),
        min_body_rate=_typed(section, "min_body_rate", int, ApiConfig.min_body_rate),
        max_connections=_typed(section, "max_connections", int, ApiConfig.max_connections),
    )
    _check_deadlines("[api]", config)
    authenticated = config.client_ca is not None or config.users_file is not None
    if not authenticated and not _is_loopback(host) and not config.allow_unauthenticated:
        raise ConfigError(
            f"[api] listen {listen!r} is not loopback: set users_file or client_ca, "
            "or allow_unauthenticated = true"
        )
    if config.max_request_bytes < 1024 or config.wait_timeout <= 0:
        raise ConfigError("[api] max_request_bytes and wait_timeout must be positive")
    return config


def _webhooks(entries: list[dict[str, Any]], base: Path) -> tuple[WebhookConfig, ...]:
    hooks = []
    for n, entry in enumerate(entries, 1):
        where = f"[[webhook]] #{n}"
        url = _typed(entry, "url", str, "")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where} url must be an http:// or https:// URL")
        name = _typed(entry, "name", str, f"webhook-{n}")
        event_types = _strings(entry, "event_types", where) or EVENT_TYPES
        unknown = set(event_types) - set(EVENT_TYPES)
        if unknown:
            raise ConfigError(f"{where} event_types: unknown {', '.join(sorted(unknown))}")
        hook = WebhookConfig(
            name=name,
            url=url,
            cpa_ids=_strings(entry, "cpa_ids", where),
            services=_strings(entry, "services", where),
            event_types=event_types,
            secret_file=_existing(entry, "secret_file", base, where),
            ca_file=_existing(entry, "ca_file", base, where),
            timeout=_typed(entry, "timeout", float, WebhookConfig.timeout),
            initial_backoff=_typed(entry, "initial_backoff", float, WebhookConfig.initial_backoff),
            max_backoff=_typed(entry, "max_backoff", float, WebhookConfig.max_backoff),
            max_age=_typed(entry, "max_age", float, WebhookConfig.max_age),
        )
        if min(hook.timeout, hook.initial_backoff, hook.max_age) <= 0:
            raise ConfigError(f"{where} timeout, initial_backoff and max_age must be positive")
        if hook.max_backoff < hook.initial_backoff:
            raise ConfigError(f"{where} max_backoff must be at least initial_backoff")
        hooks.append(hook)
    names = [h.name for h in hooks]
    if len(set(names)) != len(names):
        raise ConfigError("[[webhook]] names must be unique")
    return tuple(hooks)


def _filedrops(entries: list[dict[str, Any]], base: Path) -> tuple[FileDropConfig, ...]:
    drops = []
    for n, entry in enumerate(entries, 1):
        where = f"[[filedrop]] #{n}"
        name = _typed(entry, "name", str, "")
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{where} needs a name of letters, digits, - and _")
        where = f"[[filedrop]] {name}"
        drop = FileDropConfig(
            name=name,
            cpa_id=_typed(entry, "cpa_id", str, ""),
            service=_typed(entry, "service", str, ""),
            action=_typed(entry, "action", str, ""),
            from_party=_typed(entry, "from_party", str, ""),
            from_role=_typed(entry, "from_role", str, ""),
            to_party=_typed(entry, "to_party", str, ""),
            to_role=_typed(entry, "to_role", str, ""),
            content_type=_typed(entry, "content_type", str, FileDropConfig.content_type),
            outbox=_path(entry, "outbox", base, where),
            inbox=_path(entry, "inbox", base, where),
            inbox_actions=_strings(entry, "inbox_actions", where),
            poll_interval=_typed(entry, "poll_interval", float, FileDropConfig.poll_interval),
            max_file_bytes=_typed(entry, "max_file_bytes", int, FileDropConfig.max_file_bytes),
        )
        if not drop.cpa_id or not drop.service:
            raise ConfigError(f"{where} needs cpa_id and service")
        if drop.outbox is None and drop.inbox is None:
            raise ConfigError(f"{where} needs an outbox, an inbox or both")
        if drop.outbox is not None:
            missing = [
                k
                for k in ("action", "from_party", "from_role", "to_party", "to_role")
                if not getattr(drop, k)
            ]
            if missing:
                raise ConfigError(f"{where} outbox needs {', '.join(missing)}")
            for party in (drop.from_party, drop.to_party):
                try:
                    parse_party(party)
                except ValueError as exc:
                    raise ConfigError(f"{where}: {exc}") from None
        if drop.poll_interval <= 0 or drop.max_file_bytes < 1:
            raise ConfigError(f"{where} poll_interval and max_file_bytes must be positive")
        drops.append(drop)
    names = [d.name for d in drops]
    if len(set(names)) != len(names):
        raise ConfigError("[[filedrop]] names must be unique")
    folders = [f for d in drops for f in (d.outbox, d.inbox) if f is not None]
    if len(set(folders)) != len(folders):
        raise ConfigError("[[filedrop]] folders must not be shared between exchanges")
    return tuple(drops)


_GEMEENTECODE = re.compile(r"[0-9]{4}")
_VERSION = re.compile(r"[0-9]{4}")


def _codes(values: tuple[str, ...], where: str) -> tuple[str, ...]:
    for code in values:
        if not _GEMEENTECODE.fullmatch(code):
            raise ConfigError(f"{where} gemeentecodes: {code!r} is not a 4-digit CBS code")
    return values


def _pairs(section: dict[str, Any], key: str, where: str) -> tuple[tuple[str, str], ...] | None:
    value = section.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()
    ):
        raise ConfigError(f"{where} {key} must be a table of strings")
    return tuple(sorted(value.items()))


def _stuf(section: dict[str, Any], base: Path) -> StufConfig:
    where = "[stuf]"
    role = _typed(section, "role", str, "")
    if role == "":
        if set(section) - {"role"}:
            raise ConfigError('[stuf] options need role = "gemeente" or "node"')
        return StufConfig()
    if role not in STUF_ROLES:
        raise ConfigError(f"[stuf] role must be one of {', '.join(STUF_ROLES)}")
    gemeenten = []
    entries = section.get("gemeente", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError("[[stuf.gemeente]] must be an array of tables")
    for n, entry in enumerate(entries, 1):
        unknown = set(entry) - {"cpa_id", "gemeentecodes", "releases"}
        if unknown:
            raise ConfigError(f"unknown option {sorted(unknown)[0]!r} in [[stuf.gemeente]]")
        cpa_id = _typed(entry, "cpa_id", str, "")
        codes = _codes(_strings(entry, "gemeentecodes", f"[[stuf.gemeente]] #{n}"), where)
        if not cpa_id or not codes:
            raise ConfigError(f"[[stuf.gemeente]] #{n} needs cpa_id and gemeentecodes")
        releases = _strings(entry, "releases", f"[[stuf.gemeente]] #{n}")
        gemeenten.append(StufMunicipality(cpa_id, codes, releases))
    defaults = StufConfig()
    config = StufConfig(
        role=role,
        cpa_id=_typed(section, "cpa_id", str, ""),
        gemeentecodes=_codes(_strings(section, "gemeentecodes", where), where),
        applicatie=_typed(section, "applicatie", str, defaults.applicatie),
        applicatie_versie=_typed(section, "applicatie_versie", str, defaults.applicatie_versie),
        applicatie_subversie=_typed(
            section, "applicatie_subversie", str, defaults.applicatie_subversie
        ),
        releases=_strings(section, "releases", where) or defaults.releases,
        max_envelope_bytes=_typed(section, "max_envelope_bytes", int, defaults.max_envelope_bytes),
        require_payload_schema=_typed(section, "require_payload_schema", bool, False),
        services=_pairs(section, "services", where) or defaults.services,
        actions=_pairs(section, "actions", where) or (),
        gemeenten=tuple(gemeenten),
        outbox=_path(section, "outbox", base, where),
        inbox=_path(section, "inbox", base, where),
        provider_outbox=_path(section, "provider_outbox", base, where),
        provider_inbox=_path(section, "provider_inbox", base, where),
        read_retention_hours=_typed(
            section, "read_retention_hours", float, defaults.read_retention_hours
        ),
        max_age_days=_typed(section, "max_age_days", int, defaults.max_age_days),
        poll_interval=_typed(section, "poll_interval", float, defaults.poll_interval),
    )
    if role == "gemeente" and (not config.cpa_id or not config.gemeentecodes):
        raise ConfigError("[stuf] role gemeente needs cpa_id and gemeentecodes")
    if role == "node" and not config.gemeenten:
        raise ConfigError("[stuf] role node needs at least one [[stuf.gemeente]]")
    if role == "node" and len({g.cpa_id for g in gemeenten}) != len(gemeenten):
        raise ConfigError("[[stuf.gemeente]] cpa_ids must be unique")
    if not 3 <= len(config.applicatie) <= 50:
        raise ConfigError("[stuf] applicatie must be 3 to 50 characters (StUF)")
    for name in ("applicatie_versie", "applicatie_subversie"):
        if not _VERSION.fullmatch(getattr(config, name)):
            raise ConfigError(f"[stuf] {name} must be 4 digits (ggk0210)")
    if not 1024 <= config.max_envelope_bytes <= 1 << 30:
        raise ConfigError("[stuf] max_envelope_bytes must be between 1 KiB and 1 GiB")
    if config.read_retention_hours <= 0 or config.max_age_days < 1 or config.poll_interval <= 0:
        raise ConfigError("[stuf] read_retention_hours, max_age_days, poll_interval: positive")
    return config


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
