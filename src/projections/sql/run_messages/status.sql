UPDATE run_messages
   SET status = $3, reason = $4, updated_at = $5, last_sequence = $6, step = COALESCE($7, step)
 WHERE run_id = $1 AND message = $2 AND last_sequence < $6
