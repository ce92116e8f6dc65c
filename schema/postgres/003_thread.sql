-- The conversation thread of each run (issue #3). One row per message,
-- numbered from 1 within its run; `last_sequence` is the run event the row
-- reflects, so replays and catch-up leave it unchanged. Timestamps are
-- milliseconds since the Unix epoch.
CREATE TABLE IF NOT EXISTS run_messages
(
    run_id          text   NOT NULL,
    message         bigint NOT NULL,
    author          text   NOT NULL,
    action          text   NOT NULL,
    content         text   NOT NULL,
    metadata        jsonb,
    step            text,
    idempotency_key text,
    status          text   NOT NULL,
    reason          text,
    created_at      bigint NOT NULL,
    updated_at      bigint NOT NULL,
    last_sequence   bigint NOT NULL,
    PRIMARY KEY (run_id, message)
);
CREATE INDEX IF NOT EXISTS run_messages_key ON run_messages (run_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
