-- Oldest first; keyset pagination on (created_at, user_id).
SELECT user_id, name, role, created_at
  FROM users
 WHERE ($1 IS NULL OR created_at > $1 OR (created_at = $1 AND user_id > $2))
 ORDER BY created_at, user_id
 LIMIT $3
