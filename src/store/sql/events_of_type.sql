-- Every event of one type of one aggregate type, with its aggregate, in no
-- particular order (a start-up scan: O(events)).
SELECT aggregate_id, sequence, event_type, event_version, payload, metadata
  FROM events
 WHERE aggregate_type = $1 AND event_type = $2
