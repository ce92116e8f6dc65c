-- Many nodes (issue #8): the process that holds a node id. SQLite serves one
-- process, so this only keeps one schema for both backends.
ALTER TABLE nodes ADD COLUMN incarnation TEXT NOT NULL DEFAULT '';
