-- Committed events after a position: a follower's lag.
SELECT COUNT(*) FROM events WHERE rowid > $1
