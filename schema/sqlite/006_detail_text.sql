-- Run detail documents are text on PostgreSQL too from this migration on;
-- on SQLite they always were. Nothing to change here.
SELECT 1;
