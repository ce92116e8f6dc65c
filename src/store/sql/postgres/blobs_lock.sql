-- A purge locks the blobs it may delete before it looks for references
-- left: a put in flight holds the lock until it commits, and the purge's
-- next statement (a new snapshot) sees that put's reference.
SELECT sha256 FROM blobs WHERE sha256 = ANY($1) ORDER BY sha256 FOR UPDATE
