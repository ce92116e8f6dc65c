-- Who holds the token with this digest, and what the token allows.
SELECT t.token_id, t.user_id, u.name, u.role, t.read_only, t.expires_at, t.revoked_at
  FROM api_tokens t
  JOIN users u ON u.user_id = t.user_id
 WHERE t.digest = $1
