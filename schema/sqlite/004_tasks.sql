-- The queue of attempts that remote workers claim (issue #7). A row is
-- added when an attempt of a remote agent is dispatched and removed when
-- the attempt is over for the run. The log stays the truth (StepDispatched,
-- StepClaimed): this table only lets workers find work and claim it
-- atomically, and a row whose lease the run no longer holds is dropped at
-- its next claim. Timestamps are milliseconds since the Unix epoch.
CREATE TABLE IF NOT EXISTS tasks
(
  task_id    text    NOT NULL PRIMARY KEY,
  lease      text    NOT NULL UNIQUE,
  run_id     text    NOT NULL,
  step       text    NOT NULL,
  attempt    integer NOT NULL,
  agent      text    NOT NULL,
  payload    text    NOT NULL,
  queued_at  integer NOT NULL,
  claimed_by text,
  claimed_at integer
) STRICT;

CREATE INDEX IF NOT EXISTS tasks_waiting ON tasks (agent, queued_at, task_id)
  WHERE claimed_by IS NULL;
