-- Committed events after a position, readable yet or not: a follower's lag.
SELECT COUNT(*) FROM events WHERE (txid, position) > (($1::bigint)::text::xid8, $2)
