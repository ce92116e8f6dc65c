-- A node's heartbeat (docs/adr/0007): its row, with the database's time,
-- if this process ($3) still holds the id; `beaten` says whether it did.
-- Also how many other nodes are alive ($4: seconds after which a silent
-- node is dead). The CTE runs whether or not it is read.
WITH beat AS (
    INSERT INTO nodes (id, address, incarnation)
    VALUES ($1, $2, $3)
    ON CONFLICT (id) DO UPDATE SET address = excluded.address, heartbeat_at = now()
     WHERE nodes.incarnation = excluded.incarnation
    RETURNING id
)
SELECT (SELECT count(*) FROM beat) AS beaten,
       count(*) AS peers
  FROM nodes
 WHERE id <> $1
   AND heartbeat_at > now() - make_interval(secs => $4)
