INSERT INTO run_messages (run_id, message, author, action, content, metadata, step,
                          idempotency_key, status, reason, created_at, updated_at, last_sequence,
                          ask)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
-- A message already stored (a batch re-applied after its document fell
-- behind) still takes the status changes folded into this insert.
ON CONFLICT (run_id, message) DO UPDATE
   SET status = excluded.status, reason = excluded.reason,
       step = COALESCE(excluded.step, run_messages.step),
       updated_at = excluded.updated_at, last_sequence = excluded.last_sequence
 WHERE run_messages.last_sequence < excluded.last_sequence
