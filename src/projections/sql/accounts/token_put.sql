INSERT INTO api_tokens (token_id, user_id, name, digest, read_only, expires_at, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (token_id) DO NOTHING
