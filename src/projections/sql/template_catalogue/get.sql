SELECT template_id, name, description, version, definition, archived, created_at, updated_at, last_sequence
  FROM template_catalogue
 WHERE template_id = $1
