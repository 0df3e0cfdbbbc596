-- Large payloads in pieces: a payload over 1 MiB (messages.CHUNK_BYTES) is stored as
-- rows of 1 MiB here, and its ebms_attachment.content is left empty, so storing or
-- loading it never binds or returns the whole payload in one value.
-- The other dialect's file is 0006_payload_chunks.sqlite.sql; keep both alike.
CREATE TABLE ebms_payload_chunk (
    message_pk BIGINT NOT NULL,
    order_nr   INTEGER NOT NULL,
    seq        INTEGER NOT NULL,   -- 0, 1, ... in content order
    data       BYTEA NOT NULL,
    PRIMARY KEY (message_pk, order_nr, seq),
    FOREIGN KEY (message_pk, order_nr)
        REFERENCES ebms_attachment (message_pk, order_nr) ON DELETE CASCADE
);
