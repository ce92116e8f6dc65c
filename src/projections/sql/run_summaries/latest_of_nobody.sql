-- The most recent run of a template that belongs to nobody (started without
-- accounts), by the same index.
SELECT run_id
  FROM run_summaries
 WHERE owner IS NULL AND template_id = $1
 ORDER BY created_at DESC, run_id DESC
 LIMIT 1
