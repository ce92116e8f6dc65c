DELETE FROM tasks WHERE lease = $1
