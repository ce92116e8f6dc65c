-- Purges that did not finish: their runs, oldest first.
SELECT run_id FROM blob_releases ORDER BY since_ms, run_id
