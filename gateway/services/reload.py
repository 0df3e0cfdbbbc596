"""Reloading on SIGHUP: the TLS material, the CRLs and the users files.

Everything is read and checked first: a reload that fails keeps all the old
material and says so in one line (``event=reload-failed``); one that works
names what it reloaded (``event=reloaded what=...``).  New TLS connections, on
every listener and to partners, use the new certificates; open connections
are left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from gateway.config import GatewayConfig
from gateway.errors import describe
from gateway.http.client import EbmsClient
from gateway.services.tls_listeners import TlsContexts
from gateway.trust import TrustStore

__all__ = ["reload"]

log = logging.getLogger("dkgw.serve")


def reload(
    config: GatewayConfig,
    tls: TlsContexts,
    *,
    client: EbmsClient | None,
    trust: TrustStore | None,
    check_users_file: Callable[[Path], object],
) -> None:
    """Reload ``tls``'s contexts, ``client``'s policy, ``trust``'s CRLs; check the users files.

    ``check_users_file`` reads and checks one users file (raising ``OSError`` or
    ``ValueError``); the listeners re-read a users file themselves when it changes.
    """
    reloaded: list[str] = []
    try:
        fresh = tls.fresh(config)
        users = [f for f in (config.api.users_file, config.admin.users_file) if f]
        for path in users:
            check_users_file(path)
    except (OSError, ValueError) as exc:
        log.error(
            "event=reload-failed reason=%s; the old TLS material stays in use",
            describe(exc) or str(exc),
        )
        return
    reloaded.extend(tls.replace(fresh))
    if client is not None:
        client.use_policy(fresh.client)
        reloaded.append("tls-client")
    if users:
        reloaded.append("users-files")
    settings = config.security.trust
    if trust is not None and settings.crl_dir is not None and settings.crl_mode != "off":
        try:
            trust.crls.load_directory(settings.crl_dir)
            reloaded.append("crls")
        except (OSError, ValueError) as exc:
            log.error("event=reload-failed what=crls reason=%s", describe(exc) or str(exc))
    log.info("event=reloaded what=%s", ",".join(reloaded))
