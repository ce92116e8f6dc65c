-- Many message status changes in one statement (PostgreSQL); at most one
-- row per message (the writer keeps the latest).
UPDATE run_messages AS m
   SET status = u.s, reason = u.re, updated_at = u.t, last_sequence = u.q,
       step = COALESCE(u.st, m.step)
  FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::text[])
       AS u (r, n, s, re, t, q, st)
 WHERE m.run_id = u.r AND m.message = u.n AND m.last_sequence < u.q
