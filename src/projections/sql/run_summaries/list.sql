-- Newest first; keyset pagination on (created_at, run_id).
SELECT run_id, template_id, template_version, status, created_at, updated_at,
       agents, lease_expires_at, refine, owner
  FROM run_summaries
 WHERE ($1 IS NULL OR status = $1)
   AND ($2 IS NULL OR template_id = $2)
   AND ($3 IS NULL OR created_at < $3 OR (created_at = $3 AND run_id < $4))
   -- $6 is ",agent,": a plain substring test (no LIKE wildcards, case-sensitive on both backends)
   AND ($6 IS NULL OR replace(agents, $6, '') <> agents)
   AND ($7 IS NULL OR owner = $7)
 ORDER BY created_at DESC, run_id DESC
 LIMIT $5
