INSERT INTO users (user_id, name, role, created_at)
VALUES ($1, $2, $3, $4)
ON CONFLICT (user_id) DO NOTHING
