-- A node starting (process $3): its row, as new, unless another process
-- that is still alive ($4: seconds after which a silent node is dead) holds
-- the id; then nothing is returned. A node restarted under its id after a
-- crash waits until its earlier process is dead; one that stopped
-- gracefully removed its row.
INSERT INTO nodes (id, address, incarnation)
VALUES ($1, $2, $3)
ON CONFLICT (id) DO UPDATE SET address = excluded.address, incarnation = excluded.incarnation,
                               started_at = now(), heartbeat_at = now()
 WHERE nodes.incarnation = excluded.incarnation
    OR nodes.heartbeat_at <= now() - make_interval(secs => $4)
RETURNING started_at::text
