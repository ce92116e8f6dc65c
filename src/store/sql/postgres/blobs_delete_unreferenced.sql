-- The blobs of $1 that no run references any more (after blobs_lock.sql).
DELETE FROM blobs b
 WHERE b.sha256 = ANY($1)
   AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.sha256 = b.sha256)
RETURNING b.size
