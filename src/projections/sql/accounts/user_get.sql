SELECT user_id, name, role, created_at FROM users WHERE user_id = $1
