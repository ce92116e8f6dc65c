-- Gives a run this node took back to no node ('') when it could not load or
-- recover it: the next node to look for orphans takes it and recovers it
-- (a failure must not leave a recovery owed with a live host that forgot it).
UPDATE run_hosts
   SET node_id = '', since = now()
 WHERE run_id = $1 AND node_id = $2 AND epoch = $3
