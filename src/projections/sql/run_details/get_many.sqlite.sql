-- The stored detail documents of many runs in one statement (SQLite; $1 is
-- a JSON array of run ids).
SELECT run_id, doc FROM run_details WHERE run_id IN (SELECT value FROM json_each($1))
