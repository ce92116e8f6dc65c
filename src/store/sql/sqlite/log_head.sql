-- The last event by position.
SELECT 0 AS tx, rowid AS position FROM events ORDER BY rowid DESC LIMIT 1
