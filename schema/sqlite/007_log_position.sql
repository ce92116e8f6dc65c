-- Nothing to add on SQLite (issue #8; docs/adr/0005): writers are
-- serialised, so the rowid order of `events` is commit order and serves as
-- the log's position; the rowid is its own index. The rowid of a table
-- without an INTEGER PRIMARY KEY may change on VACUUM, which runlog never
-- runs (docs/operations.md).
SELECT 1;
