-- Where one event is in the log (after a commit that did not return it).
SELECT txid::text::bigint AS tx, position
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3
