-- A later snapshot (see snapshot_insert.sql): replaces the one before it.
UPDATE snapshots
   SET last_sequence = $3, payload = $5, current_snapshot = $4
 WHERE aggregate_type = $1 AND aggregate_id = $2 AND current_snapshot = $6
