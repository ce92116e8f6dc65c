-- Artifact versions, a page's worth (written once, never changed).
artifacts AS (
    INSERT INTO artifact_versions (run_id, name, version, step, attempt, created_at, content)
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[],
                         $6::bigint[], $7::jsonb[])
     WHERE (SELECT current FROM guard)
    ON CONFLICT (run_id, name, version) DO NOTHING
)
