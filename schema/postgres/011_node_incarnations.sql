-- Many nodes (issue #8; docs/adr/0007), after review:
--
-- `nodes.incarnation`: the process that holds a node id now. A second live
-- process with the same `--node-id` is refused, and a process whose id was
-- taken by another stops heartbeating under it.
ALTER TABLE nodes ADD COLUMN IF NOT EXISTS incarnation text NOT NULL DEFAULT '';

-- Epochs of takeovers come from one sequence, so an epoch is never given
-- twice for one run, even after its row was released and taken again (a
-- run's first host row is epoch 1).
CREATE SEQUENCE IF NOT EXISTS run_host_epochs START 2;

-- A host row with no node ('') is a run whose recovery is owed: the next
-- node to look for orphans takes and recovers it (run_abandon.sql).
