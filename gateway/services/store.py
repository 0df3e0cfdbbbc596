"""Opening the gateway's store at startup: its data directory, the database, the migrations.

"Persist before acting": the store is open and at the newest schema before any
listener or loop starts.
"""

from __future__ import annotations

from gateway.config import GatewayConfig
from gateway.errors import StartupError
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations

__all__ = ["open_store"]


def open_store(config: GatewayConfig) -> Database:
    """The store of ``config``, migrated; its data directory made if missing.

    Raises :class:`~gateway.errors.StartupError` when the data directory cannot
    be used, or the store's own errors.
    """
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot use data_dir {config.data_dir}: {exc.strerror or exc}") from exc
    db = Database.from_url(config.store)
    apply_migrations(db)
    return db
