-- A run's first snapshot, written after its events (fenced appends go
-- through the appender, so the snapshot is not in their transaction; a
-- snapshot only saves folding, and a stale one is never read past
-- `last_sequence`).
INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
VALUES ($1, $2, $3, $4, $5)
