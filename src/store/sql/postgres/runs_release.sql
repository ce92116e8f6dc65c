-- Gives up the runs whose actors passivated ($1 run ids, $2 the epochs they
-- were held at): the next node to need one takes it.
DELETE FROM run_hosts AS h
 USING UNNEST($1::text[], $2::bigint[]) AS r (run_id, epoch)
 WHERE h.run_id = r.run_id AND h.epoch = r.epoch AND h.node_id = $3
