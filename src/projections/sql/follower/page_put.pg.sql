-- The positions part of a page's one PostgreSQL statement. The follower
-- writes a page as one statement (one round trip, one transaction, however
-- many runs the page covers): `WITH` the parts of each projection it
-- writes (their `put_page.pg.sql`, parameters renumbered after each other),
-- then this one, whose parameters come last, then `SELECT 1`. Every part
-- runs on the snapshot taken before the statement, so no part sees
-- another's rows. How far the projections got goes in with their rows; a
-- stored version is kept (only a rebuild's swap raises it). Every part
-- writes only if `guard` (page_guard.pg.sql, the statement's first part)
-- found the projections' generations unchanged; the statement returns it.
positions AS (
    INSERT INTO projection_positions (name, version, tx, position, updated_at)
    SELECT name, version, $3, $4, $5 FROM UNNEST($1::text[], $2::bigint[]) AS n (name, version)
     WHERE (SELECT current FROM guard)
    ON CONFLICT (name) DO UPDATE SET tx = excluded.tx, position = excluded.position,
                                     updated_at = excluded.updated_at
     WHERE (projection_positions.tx, projection_positions.position) < (excluded.tx, excluded.position)
)
