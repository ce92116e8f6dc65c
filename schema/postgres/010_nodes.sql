-- Many nodes on one PostgreSQL (issue #8; docs/adr/0007).
--
-- `nodes`: every `runlog serve` on this database, with the address its
-- peers forward commands to. A node heartbeats every second (the database's
-- clock, so nodes' clocks need not agree); one whose heartbeat is older
-- than the dead-after interval is dead and its runs are taken over.
CREATE TABLE IF NOT EXISTS nodes
(
    id           text        PRIMARY KEY,
    address      text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- `run_hosts`: the one node that hosts each live run's actor, and the
-- epoch of that hosting. Taking a run raises its epoch; every append of
-- the run's events checks, in its own statement, that the appending node
-- still holds the run at the epoch it took (fencing). A run whose actor
-- passivated (finished, paused) has no row: the next node to need it takes
-- it.
CREATE TABLE IF NOT EXISTS run_hosts
(
    run_id  text        PRIMARY KEY,
    node_id text        NOT NULL,
    epoch   bigint      NOT NULL,
    since   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS run_hosts_node ON run_hosts (node_id);

-- Runs left running by a server from before this migration belong to no
-- node: they are taken over (and their attempts re-dispatched) like the
-- runs of a dead node.
INSERT INTO run_hosts (run_id, node_id, epoch)
SELECT run_id, '', 0
  FROM run_summaries
 WHERE status IN ('queued', 'running')
ON CONFLICT (run_id) DO NOTHING;
