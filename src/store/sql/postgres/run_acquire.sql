-- Takes run $1 for node $2 (docs/adr/0007): a run with no host, one this
-- node hosts, or one whose host is dead ($3: seconds after which a silent
-- node is dead) or gone is taken at a new epoch. Only a run that exists is
-- taken. Returns nothing when a live node hosts it, or when the run does
-- not exist. `previous` says who hosted it before, and `since_started`
-- whether that was this very process (its row is younger than the node's
-- start): the taker recovers attempts that may have died with an earlier
-- host.
WITH before AS (
    SELECT node_id, since FROM run_hosts WHERE run_id = $1
), me AS (
    SELECT started_at FROM nodes WHERE id = $2
)
INSERT INTO run_hosts AS h (run_id, node_id, epoch)
SELECT $1, $2, nextval('run_host_epochs')
 WHERE EXISTS (SELECT 1 FROM events
                WHERE aggregate_type = 'Run' AND aggregate_id = $1 AND sequence = 1)
ON CONFLICT (run_id) DO UPDATE SET node_id = excluded.node_id, epoch = excluded.epoch, since = now()
 WHERE h.node_id = excluded.node_id
    OR NOT EXISTS (SELECT 1
                     FROM nodes AS n
                    WHERE n.id = h.node_id
                      AND n.heartbeat_at > now() - make_interval(secs => $3))
RETURNING h.epoch,
          (SELECT node_id FROM before) AS previous,
          (SELECT since FROM before) > (SELECT started_at FROM me) AS since_started
