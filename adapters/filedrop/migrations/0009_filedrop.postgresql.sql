-- File drop (adapters/filedrop): one row per file taken from an exchange's outbox.
-- A file is claimed by renaming it to <outbox>/.work/<token>__<name>; the row is written
-- in the same transaction as the message it became (or the refusal), so after a crash
-- the token says whether the file in .work/ was queued already: never twice, never lost.
-- The other dialect's file is 0009_filedrop.sqlite.sql; keep both alike.
-- Timestamps are fixed-width UTC text (see timeutil.py).
CREATE TABLE filedrop_item (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    exchange   TEXT NOT NULL,            -- the [[filedrop]] name
    token      TEXT NOT NULL UNIQUE,     -- the claim: .work/<token>__<file_name>
    file_name  TEXT NOT NULL,            -- as dropped
    size       BIGINT NOT NULL,
    sha256     TEXT,                     -- NULL when refused unread (empty, too large)
    message_id TEXT,                     -- the ebMS message sent; NULL when refused
    state      TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'failed')),
    error      TEXT,                     -- why it failed, as written to the .error file
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX filedrop_item_state ON filedrop_item (exchange, state);
CREATE INDEX filedrop_item_message ON filedrop_item (message_id);
