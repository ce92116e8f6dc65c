-- Retention: finished runs created before $1 (a run that finished before a
-- time was created before it) that are not purged yet, by id after $2.
-- The run itself checks when it finished.
SELECT s.run_id
  FROM run_summaries AS s
  JOIN run_details AS d ON d.run_id = s.run_id
 WHERE s.status IN ('completed', 'failed', 'cancelled')
   AND s.created_at < $1
   AND s.run_id > $2
   AND d.doc::jsonb -> 'purged' IS NULL
 ORDER BY s.run_id
 LIMIT $3
