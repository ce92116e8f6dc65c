UPDATE tasks SET claimed_by = NULL, claimed_at = NULL WHERE task_id = $1
