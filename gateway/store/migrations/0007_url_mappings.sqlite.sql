-- URL mappings: a partner endpoint URL from a CPA (source) is replaced by another URL
-- (destination) when the delivery worker sends, e.g. to go through a forward proxy or to
-- reach a test stub.  This is ebms-core's url_mapping (its REST URLMapping).
-- The other dialect's file is 0007_url_mappings.postgresql.sql; both are the same SQL, kept
-- per dialect like 0005 and 0006.  Timestamps are fixed-width UTC text (see timeutil.py).
CREATE TABLE url_mapping (
    source      TEXT PRIMARY KEY,  -- the CPA's endpoint URL, exactly as the CPA has it
    destination TEXT NOT NULL,     -- the URL posted to instead
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
