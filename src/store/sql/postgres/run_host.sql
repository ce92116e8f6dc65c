-- Who hosts run $1, where its peers reach it, and whether that node is
-- alive ($2: seconds after which a silent node is dead). Read before
-- taking a run, so that asking about a run a live node hosts locks
-- nothing.
SELECT h.node_id, n.address,
       COALESCE(n.heartbeat_at > now() - make_interval(secs => $2), false) AS alive
  FROM run_hosts AS h
  LEFT JOIN nodes AS n ON n.id = h.node_id
 WHERE h.run_id = $1
