-- Idempotency keys of the back-office API's sendMessage (gateway/store/idempotency.py,
-- docs/api.md "Retrying safely"): the first request with a key stores its message and
-- this row in one transaction; a retry with the same key and the same request gets the
-- same answer instead of a second message.  A client's own MessageId is a key too,
-- and POST /stuf/messages takes a key as well (its answer is JSON).
-- The row goes with its message (ON DELETE CASCADE), so retention purges both together.
-- The other dialect's file is 0012_idempotency.postgresql.sql; keep both alike.
CREATE TABLE api_idempotency (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    api_user       TEXT NOT NULL,    -- who asked: keys of different users never meet
    idem_key       TEXT NOT NULL,    -- the Idempotency-Key, or "messageId:" + the MessageId
    operation      TEXT NOT NULL,    -- the API operation the key was used with
    request_sha256 TEXT NOT NULL,    -- hex SHA-256 of the request (its canonical form)
    message_pk     INTEGER REFERENCES ebms_message (id) ON DELETE CASCADE,
    message_id     TEXT,             -- the stored message's MessageId
    answer         TEXT,             -- the answer's body, given again to a retry
    created_at     TEXT NOT NULL,
    UNIQUE (api_user, idem_key)
);
CREATE INDEX api_idempotency_message ON api_idempotency (message_pk);
