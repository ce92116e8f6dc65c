-- Forgets nodes dead for a day that host nothing.
DELETE FROM nodes AS n
 WHERE n.heartbeat_at < now() - interval '1 day'
   AND NOT EXISTS (SELECT 1 FROM run_hosts AS h WHERE h.node_id = n.id)
