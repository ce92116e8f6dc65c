-- The first part of a page's statement: true while no projection of the
-- page has been swapped since the follower read its documents ($1 the
-- position rows' names, $2 the generations it read them under; a row not
-- written yet is generation 0). Locks are taken before the statement's
-- snapshot, so a page that waited for a swap sees the swap's generation.
guard AS (
    SELECT NOT EXISTS (
        SELECT 1
          FROM projection_positions AS p
          JOIN UNNEST($1::text[], $2::bigint[]) AS g (name, generation) ON p.name = g.name
         WHERE p.generation <> g.generation
    ) AS current
)
