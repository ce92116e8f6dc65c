-- Many events (of many aggregates) in one statement (PostgreSQL). The
-- primary key (aggregate_type, aggregate_id, sequence) refuses a stale writer.
-- Returns where each event went in the log (one transaction: one txid).
--
-- Fencing (docs/adr/0007): an event with an epoch ($8) is written only if
-- node $9 still hosts its run at that epoch (the host row is locked, so a
-- takeover waits for this statement and then sees its events); an event
-- without one (templates) is not checked. An append that opens a run
-- (epoch 0: its first event is the run's first) takes the host row at
-- epoch 1 instead, and is written only if it took it (a new run id has no
-- host yet; a row already there means someone else has the id). Every event of one
-- append has the same run and epoch, so an append is written whole or not
-- at all. The events of a fenced
-- append are left out, not failed, so the batch's other appends commit; its
-- appender sees it missing from what this returns.
--
-- Each statement that writes wakes the nodes that follow the log
-- (`LISTEN runlog_log`); the notification is delivered when it commits.
WITH rows AS (
    SELECT *
      FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[],
                  $7::jsonb[], $8::bigint[])
           AS r (aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                 metadata, epoch)
), hosted AS (
    INSERT INTO run_hosts (run_id, node_id, epoch)
    SELECT aggregate_id, $9, 1
      FROM rows
     WHERE epoch = 0 AND sequence = 1
    ON CONFLICT (run_id) DO NOTHING
    RETURNING run_id
), allowed AS (
    SELECT r.*
      FROM rows AS r
     WHERE r.epoch IS NULL
        OR (r.epoch = 0 AND r.aggregate_id IN (SELECT run_id FROM hosted))
        OR (r.epoch > 0
            AND EXISTS (SELECT 1
                          FROM run_hosts AS h
                         WHERE h.run_id = r.aggregate_id AND h.node_id = $9 AND h.epoch = r.epoch
                           FOR SHARE))
), inserted AS (
    INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
    SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
      FROM allowed
    RETURNING aggregate_id, sequence, txid::text::bigint AS tx, position
)
SELECT i.aggregate_id, i.sequence, i.tx, i.position
  FROM inserted AS i, (SELECT pg_notify('runlog_log', '')) AS woken
