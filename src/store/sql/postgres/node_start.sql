-- A node starting: its row, as new (a node restarted under the same id
-- starts again; the runs its earlier process hosted are its to recover).
INSERT INTO nodes (id, address)
VALUES ($1, $2)
ON CONFLICT (id) DO UPDATE SET address = excluded.address, started_at = now(), heartbeat_at = now()
RETURNING started_at::text
