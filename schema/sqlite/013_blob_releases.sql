-- Retention (issue #8, `runlog purge`), after review.
--
-- Runs whose purge is under way: recorded before the purge's event, gone
-- once the run's references are released. A row left behind (a crash or a
-- database error between the two) is a purge to finish: `runlog purge`
-- takes these runs again.
CREATE TABLE IF NOT EXISTS blob_releases
(
  run_id   text    NOT NULL PRIMARY KEY,
  since_ms integer NOT NULL
) STRICT;
