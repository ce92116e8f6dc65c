-- Many messages in one statement (PostgreSQL).
INSERT INTO run_messages (run_id, message, author, action, content, metadata, step,
                          idempotency_key, status, reason, created_at, updated_at, last_sequence)
SELECT r, m, au, ac, c, md, st, k, s, re, t, t, q
  FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
              $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::bigint[])
       AS u (r, m, au, ac, c, md, st, k, s, re, t, q)
ON CONFLICT (run_id, message) DO NOTHING
