-- A batch of read-model rows in one statement (PostgreSQL): one round trip
-- and one transaction, however many runs the batch covers. Every part runs
-- once, on the snapshot taken before the statement, so no part sees
-- another's rows: the writer folds a status change of a message inserted by
-- the same batch into that message's insert, and `status_*` only names
-- messages written before. The read models' positions go in with them.
WITH details AS (
    -- Each run at most once.
    INSERT INTO run_details (run_id, last_sequence, doc)
    SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[])
    ON CONFLICT (run_id) DO UPDATE SET last_sequence = excluded.last_sequence, doc = excluded.doc
     WHERE run_details.last_sequence < excluded.last_sequence
), summaries AS (
    INSERT INTO run_summaries (run_id, template_id, template_version, status, created_at,
                               updated_at, last_sequence, agents, lease_expires_at, refine)
    SELECT * FROM UNNEST($1::text[], $4::text[], $5::bigint[], $6::text[], $7::bigint[],
                         $8::bigint[], $2::bigint[], $9::text[], $10::bigint[], $11::jsonb[])
    ON CONFLICT (run_id) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at,
                                       last_sequence = excluded.last_sequence,
                                       agents = excluded.agents,
                                       lease_expires_at = excluded.lease_expires_at,
                                       refine = excluded.refine
     WHERE run_summaries.last_sequence < excluded.last_sequence
), artifacts AS (
    INSERT INTO artifact_versions (run_id, name, version, step, attempt, created_at, content)
    SELECT * FROM UNNEST($12::text[], $13::text[], $14::bigint[], $15::text[], $16::bigint[],
                         $17::bigint[], $18::jsonb[])
    ON CONFLICT (run_id, name, version) DO NOTHING
), messages AS (
    INSERT INTO run_messages (run_id, message, author, action, content, metadata, step,
                              idempotency_key, status, reason, created_at, updated_at,
                              last_sequence)
    SELECT * FROM UNNEST($19::text[], $20::bigint[], $21::text[], $22::text[], $23::text[],
                         $24::jsonb[], $25::text[], $26::text[], $27::text[], $28::text[],
                         $29::bigint[], $30::bigint[], $31::bigint[])
    -- A message already stored (a batch re-applied after its document fell
    -- behind) still takes the status changes folded into this insert.
    ON CONFLICT (run_id, message) DO UPDATE
       SET status = excluded.status, reason = excluded.reason,
           step = COALESCE(excluded.step, run_messages.step),
           updated_at = excluded.updated_at, last_sequence = excluded.last_sequence
     WHERE run_messages.last_sequence < excluded.last_sequence
), statuses AS (
    -- At most one row per message (the writer keeps the latest).
    UPDATE run_messages AS m
       SET status = u.s, reason = u.re, updated_at = u.t, last_sequence = u.q,
           step = COALESCE(u.st, m.step)
      FROM UNNEST($32::text[], $33::bigint[], $34::text[], $35::text[], $36::bigint[],
                  $37::bigint[], $38::text[])
           AS u (r, n, s, re, t, q, st)
     WHERE m.run_id = u.r AND m.message = u.n AND m.last_sequence < u.q
), positions AS (
    -- How far the read models got: in the same statement as their rows.
    INSERT INTO projection_positions (name, version, tx, position, updated_at)
    SELECT name, 1, $40, $41, $42 FROM UNNEST($39::text[]) AS n (name)
    ON CONFLICT (name) DO UPDATE SET tx = excluded.tx, position = excluded.position,
                                     updated_at = excluded.updated_at
     WHERE (projection_positions.tx, projection_positions.position) < (excluded.tx, excluded.position)
)
SELECT 1
