-- Certificate mappings: a certificate named in a CPA (source) is replaced by another
-- (destination) wherever the gateway uses that CPA certificate, for all CPAs or for one.
-- This is ebms-core's certificate_mapping, used to roll a certificate over before the
-- partner's CPA is reissued (research notes anchors-ebms §1.9).
-- PostgreSQL uses 0005_certificate_mappings.postgresql.sql (identity column, BYTEA);
-- keep both alike.  Timestamps are fixed-width UTC text (see timeutil.py).
CREATE TABLE certificate_mapping (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    source_sha256 TEXT NOT NULL,   -- hex SHA-256 of source: the lookup key
    source        BLOB NOT NULL,   -- the CPA's certificate, DER
    destination   BLOB NOT NULL,   -- the certificate used instead, DER
    cpa_id        TEXT,            -- NULL: for every CPA; a cpa-specific mapping wins
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
-- One mapping per source and CPA, and one global one per source.  Two partial indexes
-- because a UNIQUE (source_sha256, cpa_id) would let any number of NULL cpa_id rows in
-- (NULLs are distinct in SQL), as ebms-core's UNIQUE (id, cpa_id) does.
CREATE UNIQUE INDEX certificate_mapping_cpa
    ON certificate_mapping (source_sha256, cpa_id) WHERE cpa_id IS NOT NULL;
CREATE UNIQUE INDEX certificate_mapping_global
    ON certificate_mapping (source_sha256) WHERE cpa_id IS NULL;
