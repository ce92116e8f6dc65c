-- Stores a body once and records that run $4 references it, in one
-- statement. On a body already stored, DO UPDATE (not DO NOTHING) takes the
-- blob's row lock: a purge that locks the row first (blobs_lock.sql) makes
-- this wait and then inserts the body again; one that comes second waits
-- for this commit and then sees the new reference.
WITH stored AS (
    INSERT INTO blobs (sha256, size, body) VALUES ($1, $2, $3)
    ON CONFLICT (sha256) DO UPDATE SET size = EXCLUDED.size
    RETURNING sha256
)
INSERT INTO blob_refs (sha256, run_id)
SELECT sha256, $4 FROM stored
ON CONFLICT DO NOTHING
