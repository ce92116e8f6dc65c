SELECT user_id, name, role, created_at FROM users WHERE name = $1 ORDER BY created_at LIMIT 1
