-- The CPA registry: every Collaboration Protocol Agreement the gateway may trade under.
-- Timestamps are TEXT 'YYYY-MM-DDTHH:MM:SS.ffffffZ' (UTC, fixed width, see timeutil.py),
-- so they compare and sort correctly as text on both dialects.
-- PostgreSQL variant of 0001_cpa.sql (BYTEA rather than BLOB); keep both alike.
CREATE TABLE cpa (
    cpa_id     TEXT PRIMARY KEY,
    xml        BYTEA NOT NULL,  -- the CPA exactly as received: signatures cover these bytes
    sha256     TEXT NOT NULL,   -- hex digest of xml
    status     TEXT NOT NULL,   -- the CPA's Status/@value
    start_at   TEXT NOT NULL,   -- the CPA's Start
    end_at     TEXT NOT NULL,   -- the CPA's End
    summary    TEXT NOT NULL,   -- JSON written by the registry (parties, OINs): listing need not reparse
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
