-- A rebuild's swap: the live position row takes the rebuilt tables'
-- position (never a lower one: a follower that advanced the row meanwhile
-- keeps it), the code's version, and a new generation (a follower's page
-- read under the old one is refused and applied again).
INSERT INTO projection_positions (name, version, tx, position, updated_at, generation)
VALUES ($1, $2, $3, $4, $5, 1)
ON CONFLICT (name) DO UPDATE SET
    version = excluded.version,
    tx = CASE WHEN (projection_positions.tx, projection_positions.position) < (excluded.tx, excluded.position)
              THEN excluded.tx ELSE projection_positions.tx END,
    position = CASE WHEN (projection_positions.tx, projection_positions.position) < (excluded.tx, excluded.position)
                    THEN excluded.position ELSE projection_positions.position END,
    updated_at = excluded.updated_at,
    generation = projection_positions.generation + 1
