-- Run summaries learn what the list shows of a run's steps (issue #7): the
-- agents its steps use (`,a,b,`, for `?agent=`), the earliest lease expiry
-- of its running steps (a run is stalled once it passed), and its refine
-- loops (current attempt, attempts, scores, final score) as JSON. Rows of
-- runs recorded before this migration get them with their next event.
ALTER TABLE run_summaries ADD COLUMN agents text;
ALTER TABLE run_summaries ADD COLUMN lease_expires_at integer;
ALTER TABLE run_summaries ADD COLUMN refine text;
