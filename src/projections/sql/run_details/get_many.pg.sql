-- The stored detail documents of many runs in one statement (PostgreSQL).
SELECT run_id, doc FROM run_details WHERE run_id = ANY($1::text[])
