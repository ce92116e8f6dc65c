SELECT task_id, lease, run_id, step, attempt, agent, claimed_by
  FROM tasks
 WHERE task_id = $1
