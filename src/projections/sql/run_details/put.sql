INSERT INTO run_details (run_id, last_sequence, doc) VALUES ($1, $2, $3)
ON CONFLICT (run_id) DO UPDATE SET last_sequence = excluded.last_sequence, doc = excluded.doc
 WHERE run_details.last_sequence < excluded.last_sequence
