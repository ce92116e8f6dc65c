-- A user's most recent run of a template (index run_summaries_owner_template).
SELECT run_id
  FROM run_summaries
 WHERE owner = $1 AND template_id = $2
 ORDER BY created_at DESC, run_id DESC
 LIMIT 1
