"""The gateway's configuration file (TOML) as plain data.

One file per gateway process.  Paths are relative to the file's directory, so a
config and its certificates can move together.  Every option has a default
except the TLS material, and unknown keys are refused: a typo in a security
setting must not silently fall back to a default.

Each section is declared once, as a frozen dataclass in the package it
configures (gateway/settings/options.py): the gateway's own in
:mod:`gateway.settings.sections` and :mod:`gateway.settings.security`, the
back-office API's in ``adapters/api/config.py``, the webhooks' in
``adapters/webhooks/config.py``, the file drops' in ``adapters/filedrop/config.py``
and the StUF relay's in ``adapters/stuf/config.py``.  ``dkgw config reference``
prints every option with its default, and docs/configuration.md holds that
text; ``deploy/example.toml`` explains each option (tests/test_settings.py keeps
all three in step).
"""

from __future__ import annotations

import importlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpa.model import PartyId
from gateway.settings.options import ConfigError, Context, refuse_unknown
from gateway.settings.registry import default_of, sections
from gateway.settings.sections import (
    LOG_FORMATS,
    LOG_LEVELS,
    AdminConfig,
    DeliveryConfig,
    HttpConfig,
    LoggingConfig,
    MonitoringConfig,
    TlsConfig,
)
from gateway.settings.security import KEY_OPTIONS, TRUST_OPTIONS, SecurityConfig
from gateway.store.retention import RetentionSettings

if TYPE_CHECKING:
    from adapters.api.config import ApiConfig
    from adapters.filedrop.config import FileDropConfig
    from adapters.stuf.config import STUF_ROLES, StufConfig, StufMunicipality
    from adapters.webhooks.config import EVENT_TYPES, WebhookConfig

__all__ = [
    "EVENT_TYPES",
    "KEY_OPTIONS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "STUF_ROLES",
    "TRUST_OPTIONS",
    "AdminConfig",
    "ApiConfig",
    "ConfigError",
    "DeliveryConfig",
    "FileDropConfig",
    "GatewayConfig",
    "HttpConfig",
    "LoggingConfig",
    "MonitoringConfig",
    "SecurityConfig",
    "StufConfig",
    "StufMunicipality",
    "TlsConfig",
    "WebhookConfig",
    "load_config",
]

#: The adapters' sections, still importable from here by their old names.
_MOVED = {
    "ApiConfig": "adapters.api.config",
    "FileDropConfig": "adapters.filedrop.config",
    "StufConfig": "adapters.stuf.config",
    "StufMunicipality": "adapters.stuf.config",
    "STUF_ROLES": "adapters.stuf.config",
    "WebhookConfig": "adapters.webhooks.config",
    "EVENT_TYPES": "adapters.webhooks.config",
}


def __getattr__(name: str) -> Any:
    # Imported when asked for: the adapters' modules import the gateway's.
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    if name == "_SECTIONS":
        return {s.name: s.option_names() for s in sections()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    api: ApiConfig = field(default_factory=default_of("api"))
    webhooks: tuple[WebhookConfig, ...] = ()
    filedrops: tuple[FileDropConfig, ...] = ()
    stuf: StufConfig = field(default_factory=default_of("stuf"))
    source: Path | None = None
    retention: RetentionSettings = field(default_factory=RetentionSettings)


def _check_keys(data: dict[str, Any]) -> None:
    """Unknown sections and options first, before any value is looked at."""
    known = {s.name: s for s in sections()}
    for name, values in data.items():
        section = known.get(name)
        if section is None:
            raise ConfigError(f"unknown section [{name}]")
        if section.array:
            if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
                raise ConfigError(f"[[{name}]] must be an array of tables")
            tables = values
        elif not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table")
        else:
            tables = [values]
        for table in tables:
            refuse_unknown(table, section.option_names(), f"[{name}]")


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
    values: dict[str, Any] = {}
    for section in sections():
        table = data.get(section.name, [] if section.array else {})
        where = f"[[{section.name}]]" if section.array else f"[{section.name}]"
        value = section.read(table, Context(where, base), values)
        if section.attribute is None:
            values.update(value)
        else:
            values[section.attribute] = value
    return GatewayConfig(**values, source=path.resolve())
