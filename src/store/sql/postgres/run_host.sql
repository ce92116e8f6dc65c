-- Who hosts run $1, and where its peers reach it.
SELECT h.node_id, n.address
  FROM run_hosts AS h
  LEFT JOIN nodes AS n ON n.id = h.node_id
 WHERE h.run_id = $1
