-- Claimed tasks whose run never recorded the claim (no StepClaimed of that
-- step and attempt), claimed before $1: the node that took the row for a
-- worker stopped before it recorded the claim or gave the row back, so no
-- worker has the task and the run waits for one. Claims on the way are
-- younger than $1.
SELECT t.task_id, t.agent
  FROM tasks AS t
 WHERE t.claimed_by IS NOT NULL
   AND t.claimed_at < $1
   AND NOT EXISTS (
       SELECT 1
         FROM events AS e
        WHERE e.aggregate_type = 'Run'
          AND e.aggregate_id = t.run_id
          AND e.event_type = 'StepClaimed'
          AND e.payload -> 'StepClaimed' ->> 'step' = t.step
          AND (e.payload -> 'StepClaimed' ->> 'attempt')::bigint = t.attempt)
 ORDER BY t.claimed_at
 LIMIT 100
