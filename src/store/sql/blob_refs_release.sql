-- A purged run references no blob any more: its rows go, and the keys they
-- named are the blobs that may have no reference left.
DELETE FROM blob_refs WHERE run_id = $1 RETURNING sha256
