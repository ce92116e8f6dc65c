-- How far each read model has applied the log (issue #8; docs/adr/0005).
-- The projection follower writes a read model's row here in the same
-- transaction as the read model's rows, so a crash can never leave a
-- position ahead of what was applied (nor behind it: re-applying is a
-- no-op, every row records its last sequence). Start-up catch-up reads on
-- from here. `version` is the read model's code version when it was built.
-- Replaces projection_versions, which nothing used.
CREATE TABLE IF NOT EXISTS projection_positions
(
    name       text   NOT NULL PRIMARY KEY,
    version    integer NOT NULL,
    tx         integer NOT NULL,
    position   integer NOT NULL,
    updated_at integer NOT NULL
) STRICT;
DROP TABLE IF EXISTS projection_versions;
