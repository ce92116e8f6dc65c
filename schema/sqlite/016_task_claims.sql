-- max_claims_per_worker (issue #9): each claim counts the tasks its worker
-- holds, by this index (not a scan of the queue).
CREATE INDEX IF NOT EXISTS tasks_claimed_by
    ON tasks (claimed_by) WHERE claimed_by IS NOT NULL;
