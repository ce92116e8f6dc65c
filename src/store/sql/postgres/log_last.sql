-- The last committed event in log order, readable yet or not (a follower
-- that has applied it has applied everything committed before the query).
SELECT txid::text::bigint AS tx, position
  FROM events
 ORDER BY txid DESC, position DESC
 LIMIT 1
