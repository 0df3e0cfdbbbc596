-- Webhooks (event push): message events POSTed to back-office URLs ([[webhook]]).
-- The other dialect's file is 0008_webhooks.postgresql.sql; keep both alike.
-- Timestamps are fixed-width UTC text (see timeutil.py).  See gateway/store/webhooks.py.

-- Per configured webhook: every message_event with an id up to last_event_id has been
-- looked at (copied into webhook_delivery when it matched the webhook's filters).  A new
-- webhook starts at the newest event: it does not replay history.
CREATE TABLE webhook_cursor (
    name          TEXT PRIMARY KEY,   -- the [[webhook]] name
    last_event_id INTEGER NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);

-- One POST to make: an event for a webhook.  Claimed with a lease like delivery_task,
-- so the nodes sharing a store share the work and a dead node's claims are taken over.
-- No foreign key to message_event: pushing events must never hinder the message tables.
CREATE TABLE webhook_delivery (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook         TEXT NOT NULL,
    event_id        INTEGER NOT NULL,  -- message_event.id, the receiver's deduplication key
    message_id      TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'done', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    locked_by       TEXT,
    lease_until     TEXT,
    last_status     INTEGER,           -- HTTP status of the last attempt, if any came back
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    UNIQUE (webhook, event_id)
);
CREATE INDEX webhook_delivery_due ON webhook_delivery (state, next_attempt_at);
