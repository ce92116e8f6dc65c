-- Stores a body once. On a body already stored, DO UPDATE (not DO NOTHING)
-- takes the blob's row lock, so that a purge deleting it concurrently is
-- ordered with this write (see postgres/blob_put.sql).
INSERT INTO blobs (sha256, size, body) VALUES ($1, $2, $3)
ON CONFLICT (sha256) DO UPDATE SET size = excluded.size
