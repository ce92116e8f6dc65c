-- The run's owner; no row: no such run (yet).
SELECT owner FROM run_summaries WHERE run_id = $1
