-- StUF-GGk message log (gateway/store/stuf.py): one row per StUF message received,
-- sent, or refused, and one row per batch (an uploaded zip, an API or file-drop run) with
-- its processing report counts.  The other dialect's file is 0010_stuf.sqlite.sql; keep
-- both alike.  Timestamps are fixed-width UTC text (see timeutil.py).

-- A batch: the unit of a processing report ("verwerkingsverslag").
CREATE TABLE stuf_batch (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source      TEXT NOT NULL CHECK (source IN ('upload', 'api', 'filedrop', 'ebms')),
    name        TEXT,                    -- file name (the uploaded zip), when there is one
    node        TEXT,                    -- the gateway node that processed it
    created_at  TEXT NOT NULL,
    finished_at TEXT,                    -- NULL while it is being processed
    accepted    INTEGER NOT NULL DEFAULT 0,
    rejected    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX stuf_batch_created ON stuf_batch (created_at);

-- The message log.  Envelope fields are NULL when a refused file could not be read.
CREATE TABLE stuf_message (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id         BIGINT REFERENCES stuf_batch (id),
    direction        TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    referentienummer TEXT,
    cross_ref        TEXT,               -- crossRefnummer (Du01, Fo01)
    berichtcode      TEXT CHECK (berichtcode IN ('Di01', 'Du01', 'Fo01')),
    functie          TEXT,               -- message type: WMO301, JW302, ...
    gemeente         TEXT,               -- the 4-digit CBS gemeentecode of the exchange
    counterpart      TEXT,               -- the other side: AGB code or fixed word (CAK, IB, ...)
    bericht_id       TEXT,               -- payload BerichtIdentificatie/Identificatie (of the heen)
    sender_org       TEXT,               -- stuurgegevens/zender/organisatie
    receiver_org     TEXT,               -- stuurgegevens/ontvanger/organisatie
    ebms_message_id  TEXT,               -- the ebMS message that carried it
    cpa_id           TEXT,
    file_name        TEXT,               -- the file in the batch it came from
    status           TEXT NOT NULL CHECK (status IN ('accepted', 'rejected', 'sent', 'delivered',
                                                     'failed', 'received', 'read')),
    reason_code      TEXT,               -- why rejected or failed: StUF055, IB009, duplicate, ...
    reason           TEXT,
    size             BIGINT,             -- bytes of the file or envelope
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    delivered_at     TEXT,
    read_at          TEXT
);
-- Duplicate detection: a referentienummer used once by a sender may not come back, in
-- either direction.  Refused rows do not count (the file never went anywhere, and a
-- refusal because of a duplicate must itself be logged).  Writers insert with
-- ON CONFLICT DO NOTHING on this index, so concurrent nodes cannot both win.
CREATE UNIQUE INDEX stuf_message_reference ON stuf_message (sender_org, referentienummer)
    WHERE status <> 'rejected';
CREATE INDEX stuf_message_created ON stuf_message (created_at);
CREATE INDEX stuf_message_functie ON stuf_message (functie, created_at);
CREATE INDEX stuf_message_gemeente ON stuf_message (gemeente, created_at);
CREATE INDEX stuf_message_status ON stuf_message (status, created_at);
CREATE INDEX stuf_message_batch ON stuf_message (batch_id);
CREATE INDEX stuf_message_ebms ON stuf_message (ebms_message_id);
-- A retour's Du01 answers the Di01 that carried the heen message with the same
-- gemeente, counterpart and BerichtIdentificatie: its crossRefnummer is found here.
CREATE INDEX stuf_message_bericht ON stuf_message (gemeente, counterpart, bericht_id);
-- Retention: read items by read_at.
CREATE INDEX stuf_message_read ON stuf_message (read_at);
