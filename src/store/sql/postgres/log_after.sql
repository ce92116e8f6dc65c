-- Events after a position, in log order, from finished transactions only:
-- an event whose transaction is below the snapshot's xmin can no longer be
-- joined by one that sorts before it (docs/adr/0005).
SELECT txid::text::bigint AS tx, position, aggregate_type, aggregate_id, sequence,
       event_type, event_version, payload, metadata
  FROM events
 WHERE (txid, position) > (($1::bigint)::text::xid8, $2)
   AND txid < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY txid, position
 LIMIT $3
