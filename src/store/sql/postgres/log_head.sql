-- The last event readable by position now (see log_after.sql).
SELECT txid::text::bigint AS tx, position
  FROM events
 WHERE txid < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY txid DESC, position DESC
 LIMIT 1
