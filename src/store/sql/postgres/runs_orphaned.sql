-- Runs whose host is dead ($1: seconds after which a silent node is dead),
-- gone, or no node (a recovery owed), oldest first, at most $2; not the
-- asking node's own ($3).
SELECT h.run_id
  FROM run_hosts AS h
  LEFT JOIN nodes AS n ON n.id = h.node_id
 WHERE h.node_id <> $3
   AND (n.id IS NULL OR n.heartbeat_at <= now() - make_interval(secs => $1))
 ORDER BY h.since
 LIMIT $2
