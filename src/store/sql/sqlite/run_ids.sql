-- The runs in the log, with an event recorded at or after $1 when it is
-- given (recorded_at is RFC 3339 UTC with milliseconds, which sorts as text).
SELECT DISTINCT aggregate_id
  FROM events
 WHERE aggregate_type = 'Run'
   AND ($1 IS NULL OR json_extract(metadata, '$.recorded_at') >= $1)
 ORDER BY aggregate_id
