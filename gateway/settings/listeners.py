"""What the HTTP listeners' sections share: ``listen``, their TLS files, slow-client limits.

``[http]`` (the ebMS endpoint), ``[admin]`` and the adapters' ``[api]`` each
listen on ``HOST:PORT``; the admin and API listeners take HTTPS, mutual TLS and
HTTP Basic the same way; all three take the slow-client deadlines of
gateway/http/deadlines.py (docs/operations.md, "Slow clients").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.settings.options import (
    EXISTING_PATH,
    STR,
    ConfigError,
    Context,
    Kind,
)

_ANY_HOST = "0.0.0.0"  # noqa: S104 - a listener without a host listens on all


def _listen(value: Any, key: str, ctx: Context) -> tuple[str, int]:
    value = STR.read(value, key, ctx)
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{ctx.where} listen must be HOST:PORT, got {value!r}")
    return host.strip("[]") or _ANY_HOST, int(port)


#: ``HOST:PORT`` (an IPv6 host in brackets), spread over the ``host`` and ``port`` fields.
LISTEN = Kind("HOST:PORT", _listen, fills=("host", "port"))


def listen_given(table: Mapping[str, Any], ctx: Context) -> bool:
    """Whether an optional listener is on: its ``listen`` is set and not ``""``."""
    return bool(STR.read(table.get("listen", ""), "listen", ctx))


def listener_security(values: Mapping[str, Any], where: str) -> None:
    """``certificate`` and ``key`` go together; ``client_ca`` needs both."""
    if (values.get("certificate") is None) != (values.get("key") is None):
        raise ConfigError(f"{where} certificate and key go together")
    if values.get("client_ca") is not None and values.get("certificate") is None:
        raise ConfigError(f"{where} client_ca (mutual TLS) needs certificate and key")


#: The kind of a listener's ``certificate``, ``key``, ``client_ca`` and ``users_file``.
SECURITY_KIND = EXISTING_PATH


def is_loopback(host: str) -> bool:
    """Whether a listener's host is reachable from this machine only."""
    return host in ("localhost", "::1") or host.startswith("127.")
