-- Events after a position, in log order, from finished transactions only
-- (docs/adr/0005). The horizon is the oldest transaction that was still
-- running when this statement's snapshot was taken and that may belong to
-- this database (or the snapshot's xmax when there is none): an event
-- below it can no longer be joined by one that sorts before it.
-- Transactions are server-wide, so running ones that pg_stat_activity
-- shows in another database are left out: a long transaction elsewhere on
-- the server does not hold this log back. One that finished meanwhile, or
-- whose database is not shown, counts as this database's (it may be).
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
SELECT txid::text::bigint AS tx, position, aggregate_type, aggregate_id, sequence,
       event_type, event_version, payload, metadata
  FROM events
 WHERE (txid, position) > (($1::bigint)::text::xid8, $2)
   AND txid < (SELECT h FROM horizon)
 ORDER BY txid, position
 LIMIT $3
