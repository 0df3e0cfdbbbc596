-- ebMS messages, their payloads, delivery tasks, delivery attempts and events.
-- PostgreSQL variant of 0002_messages.sqlite.sql (identity columns, BYTEA); keep both alike.
-- Timestamps are fixed-width UTC text (see timeutil.py).

-- One row per ebMS message sent or received, signals (acks, errors, pongs) included.
-- The envelope is kept exactly as it went over the wire: a resend must repeat the
-- identical bytes (ebMS 2.0 §6.5.3) and a signature covers them.
CREATE TABLE ebms_message (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id        TEXT NOT NULL,
    direction         TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    cpa_id            TEXT NOT NULL,
    conversation_id   TEXT NOT NULL,
    ref_to_message_id TEXT,
    from_party        TEXT NOT NULL,   -- PartyId(s) as type:value, comma separated
    from_role         TEXT,
    to_party          TEXT NOT NULL,
    to_role           TEXT,
    service           TEXT NOT NULL,   -- type:value
    action            TEXT NOT NULL,
    sent_at           TEXT NOT NULL,   -- eb:Timestamp
    time_to_live      TEXT,
    persist_until     TEXT,            -- keep the id for duplicate elimination until then
    status            TEXT,            -- CREATED/DELIVERED/... or RECEIVED/...; NULL for signals
    status_at         TEXT,
    content_type      TEXT NOT NULL,   -- HTTP Content-Type the message travels with
    envelope          BYTEA NOT NULL,   -- the SOAP part, byte-exact
    fingerprint       TEXT NOT NULL,   -- sha256 over envelope and payloads: same id, same message?
    created_at        TEXT NOT NULL,
    UNIQUE (message_id, direction)
);
CREATE INDEX ebms_message_ref ON ebms_message (ref_to_message_id);
CREATE INDEX ebms_message_status ON ebms_message (direction, status, status_at);

CREATE TABLE ebms_attachment (
    message_pk   BIGINT NOT NULL REFERENCES ebms_message (id) ON DELETE CASCADE,
    order_nr     INTEGER NOT NULL,
    content_id   TEXT NOT NULL,
    content_type TEXT NOT NULL,
    filename     TEXT,
    size         INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    content      BYTEA NOT NULL,
    PRIMARY KEY (message_pk, order_nr)
);

-- Work for the delivery worker: a message (or signal) to POST to a partner.  Any node
-- may claim a due task; a claim is a lease, so a crashed node's work is taken over.
CREATE TABLE delivery_task (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_pk      BIGINT NOT NULL UNIQUE REFERENCES ebms_message (id) ON DELETE CASCADE,
    url             TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'done',
                                                   'failed', 'expired')),
    next_attempt_at TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,  -- 1 + Retries for reliable messaging, else 1
    retry_interval  DOUBLE PRECISION,           -- seconds between attempts (RetryInterval)
    expires_at      TEXT,              -- TimeToLive: no attempt after it
    locked_by       TEXT,
    lease_until     TEXT,
    last_error      TEXT,
    updated_at      TEXT NOT NULL
);
CREATE INDEX delivery_task_due ON delivery_task (state, next_attempt_at);

CREATE TABLE delivery_attempt (
    task_id     BIGINT NOT NULL REFERENCES delivery_task (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    node        TEXT NOT NULL,
    url         TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    http_status INTEGER,
    outcome     TEXT NOT NULL,
    error       TEXT,
    PRIMARY KEY (task_id, attempt)
);

-- What the back office is told: RECEIVED, DELIVERED, FAILED, EXPIRED (ebms-core's events).
CREATE TABLE message_event (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_pk   BIGINT NOT NULL REFERENCES ebms_message (id) ON DELETE CASCADE,
    message_id   TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    processed_at TEXT
);
CREATE INDEX message_event_unprocessed ON message_event (processed_at, id);

CREATE TABLE status_history (
    message_pk BIGINT NOT NULL REFERENCES ebms_message (id) ON DELETE CASCADE,
    status     TEXT NOT NULL,
    at         TEXT NOT NULL,
    reason     TEXT
);
CREATE INDEX status_history_message ON status_history (message_pk);
