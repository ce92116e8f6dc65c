-- Events stamped with transaction ids this server has not reached: the log
-- was restored from another server (pg_dump / pg_restore, logical
-- replication), whose transaction counter was ahead of this one's.
SELECT EXISTS (SELECT 1 FROM events WHERE txid >= pg_snapshot_xmax(pg_current_snapshot()))
