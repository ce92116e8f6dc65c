SELECT e.aggregate_id, COALESCE(MAX(c.last_sequence), 0) AS projected
  FROM events e
  LEFT JOIN template_catalogue c ON c.template_id = e.aggregate_id
 WHERE e.aggregate_type = 'Template'
 GROUP BY e.aggregate_id
HAVING MAX(e.sequence) > COALESCE(MAX(c.last_sequence), 0)
