-- Takes run $1 for node $2 (docs/adr/0007): a run with no host, one this
-- node hosts, or one whose host is dead ($3: seconds after which a silent
-- node is dead, or gone) is taken at a new epoch. Returns nothing when a live node
-- hosts it. `previous` and `since` say who hosted it before and since when,
-- so the taker knows whether attempts died with an earlier host.
WITH before AS (
    SELECT node_id, since FROM run_hosts WHERE run_id = $1
)
INSERT INTO run_hosts AS h (run_id, node_id, epoch)
VALUES ($1, $2, 1)
ON CONFLICT (run_id) DO UPDATE SET node_id = excluded.node_id, epoch = h.epoch + 1, since = now()
 WHERE h.node_id = excluded.node_id
    OR NOT EXISTS (SELECT 1
                     FROM nodes AS n
                    WHERE n.id = h.node_id
                      AND n.heartbeat_at > now() - make_interval(secs => $3))
RETURNING h.epoch,
          (SELECT node_id FROM before) AS previous,
          (SELECT since FROM before) > $4::timestamptz AS since_started
