INSERT INTO token_use (token_id, last_used_at) VALUES ($1, $2)
ON CONFLICT (token_id) DO UPDATE SET last_used_at = excluded.last_used_at
 WHERE token_use.last_used_at < excluded.last_used_at
