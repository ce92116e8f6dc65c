-- Run detail documents are stored as text, not jsonb (issue #7's
-- benchmarks): the document is only ever read and written whole, and a run
-- rewrites it with most of its events, so parsing it into jsonb on every
-- write cost PostgreSQL CPU for nothing. Existing documents are converted
-- (the table is rewritten once, under a lock, while the server starts).
ALTER TABLE run_details ALTER COLUMN doc TYPE text USING doc::text;
