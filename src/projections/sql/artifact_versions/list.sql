SELECT version, step, attempt, created_at, content
  FROM artifact_versions
 WHERE run_id = $1 AND name = $2
 ORDER BY version
