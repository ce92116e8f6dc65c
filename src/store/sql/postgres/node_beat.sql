-- A node's heartbeat (docs/adr/0007): its row, with the database's time,
-- if this process ($3) still holds the id. Returns the id when it did,
-- nothing when another process took it.
INSERT INTO nodes (id, address, incarnation)
VALUES ($1, $2, $3)
ON CONFLICT (id) DO UPDATE SET address = excluded.address, heartbeat_at = now()
 WHERE nodes.incarnation = excluded.incarnation
RETURNING id
