-- Thread messages, a page's worth. Both parts run on the snapshot taken
-- before the statement, so `statuses` does not see the rows `messages`
-- inserts: the projection folds a status change of a message posted in the
-- same page into that message's insert, and `statuses` only names messages
-- written before.
messages AS (
    INSERT INTO run_messages (run_id, message, author, action, content, metadata, step,
                              idempotency_key, status, reason, created_at, updated_at,
                              last_sequence, ask)
    SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                         $6::jsonb[], $7::text[], $8::text[], $9::text[], $10::text[],
                         $11::bigint[], $12::bigint[], $13::bigint[], $21::jsonb[])
     WHERE (SELECT current FROM guard)
    -- A message already stored (a page re-applied after its document fell
    -- behind) still takes the status changes folded into this insert.
    ON CONFLICT (run_id, message) DO UPDATE
       SET status = excluded.status, reason = excluded.reason,
           step = COALESCE(excluded.step, run_messages.step),
           updated_at = excluded.updated_at, last_sequence = excluded.last_sequence
     WHERE run_messages.last_sequence < excluded.last_sequence
), statuses AS (
    -- At most one row per message (the projection keeps the latest).
    UPDATE run_messages AS m
       SET status = u.s, reason = u.re, updated_at = u.t, last_sequence = u.q,
           step = COALESCE(u.st, m.step)
      FROM UNNEST($14::text[], $15::bigint[], $16::text[], $17::text[], $18::bigint[],
                  $19::bigint[], $20::text[])
           AS u (r, n, s, re, t, q, st)
     WHERE m.run_id = u.r AND m.message = u.n AND m.last_sequence < u.q
       AND (SELECT current FROM guard)
)
