-- Runs whose read models lag behind their log (a crash between the event
-- commit and the projection write), with how far the read model got.
SELECT e.aggregate_id, COALESCE(MAX(d.last_sequence), 0) AS projected
  FROM events e
  LEFT JOIN run_details d ON d.run_id = e.aggregate_id
 WHERE e.aggregate_type = 'Run'
 GROUP BY e.aggregate_id
HAVING MAX(e.sequence) > COALESCE(MAX(d.last_sequence), 0)
