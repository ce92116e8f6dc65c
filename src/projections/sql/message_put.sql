INSERT INTO run_messages (run_id, message, author, action, content, metadata, step,
                          idempotency_key, status, reason, created_at, updated_at, last_sequence)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (run_id, message) DO NOTHING
