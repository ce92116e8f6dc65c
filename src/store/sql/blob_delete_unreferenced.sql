-- A blob no run references any more (after blob_refs_release.sql).
DELETE FROM blobs
 WHERE sha256 = $1
   AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.sha256 = blobs.sha256)
RETURNING size
