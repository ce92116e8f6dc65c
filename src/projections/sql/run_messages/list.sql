SELECT message, author, action, content, metadata, step, idempotency_key, status, reason,
       created_at, updated_at, ask
  FROM run_messages
 WHERE run_id = $1 AND message > $2
 ORDER BY message
 LIMIT $3
