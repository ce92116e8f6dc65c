-- Events after a position, in log order (rowid: commit order, as writers
-- are serialised).
SELECT 0 AS tx, rowid AS position, aggregate_type, aggregate_id, sequence,
       event_type, event_version, payload, metadata
  FROM events
 WHERE rowid > $1
 ORDER BY rowid
 LIMIT $2
