SELECT name, tx, position FROM projection_positions
