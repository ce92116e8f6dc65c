-- Many nodes on one PostgreSQL (issue #8; docs/adr/0007).
--
-- `nodes`: every `runlog serve` on this database, with the address its
-- peers forward commands to, and the process (`incarnation`) that holds the
-- id now. A node heartbeats every second (the database's clock, so nodes'
-- clocks need not agree); one whose heartbeat is older than the dead-after
-- interval (5 s) is dead and its runs are taken over.
CREATE TABLE IF NOT EXISTS nodes
(
    id           text        PRIMARY KEY,
    address      text        NOT NULL,
    incarnation  text        NOT NULL DEFAULT '',
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- `run_hosts`: the one node that hosts each live run's actor, and the
-- epoch of that hosting. Taking a run raises its epoch; every append of
-- the run's events checks, in its own statement, that the appending node
-- still holds the run at the epoch it took (fencing). A run whose actor
-- passivated (finished, paused) has no row: the next node to need it takes
-- it. A row with no node ('') is a run whose recovery is owed: the next
-- node to look takes it and recovers it.
CREATE TABLE IF NOT EXISTS run_hosts
(
    run_id  text        PRIMARY KEY,
    node_id text        NOT NULL,
    epoch   bigint      NOT NULL,
    since   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS run_hosts_node ON run_hosts (node_id);

-- Epochs of takeovers: one sequence for every run, so an epoch is never
-- given twice for one run, even after its row was released and taken again
-- (a run's first host row is epoch 1).
CREATE SEQUENCE IF NOT EXISTS run_host_epochs START 2;

-- Runs left running by a server from before this migration belong to no
-- node: they are taken over (and their attempts re-dispatched) like the
-- runs of a dead node.
INSERT INTO run_hosts (run_id, node_id, epoch)
SELECT run_id, '', 0
  FROM run_summaries
 WHERE status IN ('queued', 'running')
ON CONFLICT (run_id) DO NOTHING;
