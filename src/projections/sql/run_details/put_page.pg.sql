-- Run detail documents, a page's worth: each run at most once.
details AS (
    INSERT INTO run_details (run_id, last_sequence, doc)
    SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[])
     WHERE (SELECT current FROM guard)
    ON CONFLICT (run_id) DO UPDATE SET last_sequence = excluded.last_sequence, doc = excluded.doc
     WHERE run_details.last_sequence < excluded.last_sequence
)
