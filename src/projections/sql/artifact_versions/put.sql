INSERT INTO artifact_versions (run_id, name, version, step, attempt, created_at, content)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (run_id, name, version) DO NOTHING
