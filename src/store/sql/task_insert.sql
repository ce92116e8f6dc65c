INSERT INTO tasks (task_id, lease, run_id, step, attempt, agent, payload, queued_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (lease) DO NOTHING
