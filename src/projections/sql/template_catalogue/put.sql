INSERT INTO template_catalogue (template_id, name, description, version, definition, archived,
                                created_at, updated_at, last_sequence)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (template_id) DO UPDATE SET name = excluded.name, description = excluded.description,
    version = excluded.version, definition = excluded.definition, archived = excluded.archived,
    updated_at = excluded.updated_at, last_sequence = excluded.last_sequence
 WHERE template_catalogue.last_sequence < excluded.last_sequence
