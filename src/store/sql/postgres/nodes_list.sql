-- Every node, whether it is alive ($1: seconds after which a silent node is
-- dead), how many runs it hosts and the first of them.
SELECT n.id, n.address,
       to_char(n.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS started_at,
       to_char(n.heartbeat_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS heartbeat_at,
       n.heartbeat_at > now() - make_interval(secs => $1) AS alive,
       (SELECT count(*) FROM run_hosts AS h WHERE h.node_id = n.id) AS hosted,
       COALESCE((SELECT array_agg(run_id ORDER BY run_id)
                   FROM (SELECT run_id FROM run_hosts AS h WHERE h.node_id = n.id
                          ORDER BY run_id LIMIT $2) AS first), '{}') AS runs
  FROM nodes AS n
 ORDER BY n.id
