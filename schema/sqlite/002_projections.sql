-- Read models. Every row records the last event sequence it reflects, so a
-- projection update is idempotent and a lagging one can be caught up from
-- the log. Timestamps are milliseconds since the Unix epoch.
CREATE TABLE IF NOT EXISTS projection_versions
(
  name    text    NOT NULL PRIMARY KEY,
  version integer NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS run_summaries
(
  run_id           text    NOT NULL PRIMARY KEY,
  template_id      text    NOT NULL,
  template_version integer NOT NULL,
  status           text    NOT NULL,
  created_at       integer NOT NULL,
  updated_at       integer NOT NULL,
  last_sequence    integer NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS run_summaries_created ON run_summaries (created_at DESC, run_id DESC);
CREATE INDEX IF NOT EXISTS run_summaries_status ON run_summaries (status, created_at DESC, run_id DESC);
CREATE INDEX IF NOT EXISTS run_summaries_template ON run_summaries (template_id, created_at DESC, run_id DESC);

CREATE TABLE IF NOT EXISTS run_details
(
  run_id        text    NOT NULL PRIMARY KEY,
  last_sequence integer NOT NULL,
  doc           text    NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS artifact_versions
(
  run_id     text    NOT NULL,
  name       text    NOT NULL,
  version    integer NOT NULL,
  step       text    NOT NULL,
  attempt    integer NOT NULL,
  created_at integer NOT NULL,
  content    text    NOT NULL,
  PRIMARY KEY (run_id, name, version)
) STRICT;

CREATE TABLE IF NOT EXISTS template_catalogue
(
  template_id   text    NOT NULL PRIMARY KEY,
  name          text    NOT NULL,
  description   text,
  version       integer NOT NULL,
  definition    text    NOT NULL,
  archived      integer NOT NULL,
  created_at    integer NOT NULL,
  updated_at    integer NOT NULL,
  last_sequence integer NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS template_catalogue_created ON template_catalogue (created_at DESC, template_id DESC);
