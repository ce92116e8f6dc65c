-- The last event readable by position now (the horizon of log_after.sql).
WITH snapshot AS (
    SELECT pg_current_snapshot() AS s
), elsewhere AS (
    SELECT backend_xid
      FROM pg_stat_activity
     WHERE backend_xid IS NOT NULL
       AND datid <> (SELECT oid FROM pg_database WHERE datname = current_database())
), horizon AS (
    SELECT COALESCE(
               (SELECT MIN(x)
                  FROM pg_snapshot_xip((SELECT s FROM snapshot)) AS x
                 WHERE x::xid NOT IN (SELECT backend_xid FROM elsewhere)),
               pg_snapshot_xmax((SELECT s FROM snapshot))) AS h
)
SELECT txid::text::bigint AS tx, position
  FROM events
 WHERE txid < (SELECT h FROM horizon)
 ORDER BY txid DESC, position DESC
 LIMIT 1
