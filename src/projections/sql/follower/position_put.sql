-- A projection's position, written with its rows (SQLite). A stored
-- version is kept: only a rebuild's swap raises it.
INSERT INTO projection_positions (name, version, tx, position, updated_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (name) DO UPDATE SET tx = excluded.tx, position = excluded.position,
                                 updated_at = excluded.updated_at
 WHERE (projection_positions.tx, projection_positions.position) < (excluded.tx, excluded.position)
