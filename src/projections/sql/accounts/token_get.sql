SELECT t.token_id, t.user_id, t.name, t.read_only, t.expires_at, t.created_at, t.revoked_at,
       w.last_used_at
  FROM api_tokens t
  LEFT JOIN token_use w ON w.token_id = t.token_id
 WHERE t.token_id = $1
