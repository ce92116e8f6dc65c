DELETE FROM tasks WHERE lease = $1 AND claimed_by IS NULL
