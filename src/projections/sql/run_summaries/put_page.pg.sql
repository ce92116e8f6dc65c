-- Run summaries, a page's worth: each run at most once.
summaries AS (
    INSERT INTO run_summaries (run_id, template_id, template_version, status, created_at,
                               updated_at, last_sequence, agents, lease_expires_at, refine, owner)
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[],
                         $6::bigint[], $7::bigint[], $8::text[], $9::bigint[], $10::jsonb[],
                         $11::text[])
     WHERE (SELECT current FROM guard)
    ON CONFLICT (run_id) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at,
                                       last_sequence = excluded.last_sequence,
                                       agents = excluded.agents,
                                       lease_expires_at = excluded.lease_expires_at,
                                       refine = excluded.refine,
                                       owner = excluded.owner
     WHERE run_summaries.last_sequence < excluded.last_sequence
)
