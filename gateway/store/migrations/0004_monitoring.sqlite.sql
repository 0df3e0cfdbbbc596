-- Link monitoring by scheduled Pings, and the back office's correlation id.
-- PostgreSQL uses 0004_monitoring.postgresql.sql; keep both alike.

-- One row per (CPA, our party, their party) that the gateway pings.  A row is the
-- schedule and the latest verdict; any node may send the due Ping (the row holds the
-- Ping in flight, so there is never more than one per link) and any node may settle it
-- (the Pong can arrive at any node sharing the store).
CREATE TABLE ping_link (
    cpa_id               TEXT NOT NULL,
    from_party           TEXT NOT NULL,   -- type:value
    to_party             TEXT NOT NULL,
    active               INTEGER NOT NULL DEFAULT 1,   -- 0: the CPA no longer implies it
    next_due             TEXT NOT NULL,
    ping_message_id      TEXT,            -- the Ping in flight, if any
    ping_queued_at       TEXT,
    last_checked_at      TEXT,
    last_outcome         TEXT CHECK (last_outcome IN ('up', 'down')),
    last_rtt             REAL,            -- seconds
    last_reason          TEXT,
    last_success_at      TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (cpa_id, from_party, to_party)
);
CREATE INDEX ping_link_due ON ping_link (active, next_due);

-- Every settled Ping; kept 30 days.
CREATE TABLE ping_result (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    cpa_id      TEXT NOT NULL,
    from_party  TEXT NOT NULL,
    to_party    TEXT NOT NULL,
    message_id  TEXT,
    node        TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('up', 'down')),
    rtt         REAL,
    reason      TEXT
);
CREATE INDEX ping_result_link ON ping_result (cpa_id, from_party, to_party, finished_at);
CREATE INDEX ping_result_finished ON ping_result (finished_at);

-- Carried from the back-office request to the ebMS message, its attempts and its ack.
ALTER TABLE ebms_message ADD COLUMN correlation_id TEXT;
