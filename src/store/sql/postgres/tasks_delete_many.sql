-- The tasks of many leases in one statement (PostgreSQL): one round trip,
-- its own transaction.
DELETE FROM tasks WHERE lease = ANY($1::text[])
