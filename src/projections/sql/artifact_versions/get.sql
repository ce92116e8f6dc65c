-- One version of a run's artifact: its stored content.
SELECT content
  FROM artifact_versions
 WHERE run_id = $1 AND name = $2 AND version = $3
