SELECT name, version, tx, position, updated_at FROM projection_positions ORDER BY name
