-- The conversation thread of each run (issue #3). One row per message,
-- numbered from 1 within its run; `last_sequence` is the run event the row
-- reflects, so replays and catch-up leave it unchanged. Timestamps are
-- milliseconds since the Unix epoch; metadata is JSON text.
CREATE TABLE IF NOT EXISTS run_messages
(
  run_id          text    NOT NULL,
  message         integer NOT NULL,
  author          text    NOT NULL,
  action          text    NOT NULL,
  content         text    NOT NULL,
  metadata        text,
  step            text,
  idempotency_key text,
  status          text    NOT NULL,
  reason          text,
  created_at      integer NOT NULL,
  updated_at      integer NOT NULL,
  last_sequence   integer NOT NULL,
  PRIMARY KEY (run_id, message)
) STRICT;
CREATE INDEX IF NOT EXISTS run_messages_key ON run_messages (run_id, idempotency_key)
  WHERE idempotency_key IS NOT NULL;
