UPDATE tasks
   SET claimed_by = $1, claimed_at = $2
 -- A worker holds at most $4 tasks: checked in the claim itself, so that
 -- concurrent claims of one worker cannot pass a check made before.
 WHERE (SELECT COUNT(*) FROM tasks WHERE claimed_by = $1) < $4
   AND task_id = (SELECT task_id
                    FROM tasks
                   WHERE claimed_by IS NULL AND agent IN (SELECT value FROM json_each($3))
                   ORDER BY queued_at, task_id
                   LIMIT 1)
RETURNING task_id, lease, run_id, step, attempt, agent, payload
