-- Cross-workflow prerequisites (issue #9): a start looks up the starting
-- user's most recent run of each template its prerequisites name, by this
-- index (never a scan of the user's runs).
CREATE INDEX IF NOT EXISTS run_summaries_owner_template
    ON run_summaries (owner, template_id, created_at DESC, run_id DESC);
