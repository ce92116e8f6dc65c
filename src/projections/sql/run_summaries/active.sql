SELECT run_id FROM run_summaries WHERE status IN ('queued', 'running') ORDER BY created_at
