-- Retention (issue #8, `runlog purge`): which runs reference each blob.
-- Blobs are content-addressed, so one body can serve many runs; a purge
-- removes its run's rows here and deletes only the blobs no run
-- references any more. The engine records a row with each blob it stores;
-- the rows of the runs already in the log are filled from their events
-- here, once.
CREATE TABLE IF NOT EXISTS blob_refs
(
  sha256 text NOT NULL,
  run_id text NOT NULL,
  PRIMARY KEY (sha256, run_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blob_refs_run ON blob_refs (run_id);

INSERT OR IGNORE INTO blob_refs (sha256, run_id)
SELECT DISTINCT t.value, e.aggregate_id
  FROM events e, json_tree(e.payload) t
 WHERE e.aggregate_type = 'Run'
   AND e.event_type IN ('StepCompleted', 'StepAwaitingReview', 'StepProduced')
   AND instr(e.payload, '"blob"') > 0
   AND t.key = 'sha256'
   AND t.path LIKE '%.blob';
