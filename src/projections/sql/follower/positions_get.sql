SELECT name, tx, position, generation FROM projection_positions
