-- Many events (of many aggregates) in one statement (PostgreSQL). The
-- primary key (aggregate_type, aggregate_id, sequence) refuses a stale writer.
-- Returns where each event went in the log (one transaction: one txid).
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[])
RETURNING aggregate_id, sequence, txid::text::bigint AS tx, position
