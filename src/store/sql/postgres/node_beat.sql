-- A node's registration and heartbeat (docs/adr/0007): its row, with the
-- database's time, and how many other nodes are alive ($3: seconds after
-- which a silent node is dead).
WITH beat AS (
    INSERT INTO nodes (id, address)
    VALUES ($1, $2)
    ON CONFLICT (id) DO UPDATE SET address = excluded.address, heartbeat_at = now()
    RETURNING id
)
SELECT count(*) AS peers
  FROM nodes
 WHERE id <> $1
   AND heartbeat_at > now() - make_interval(secs => $3)
