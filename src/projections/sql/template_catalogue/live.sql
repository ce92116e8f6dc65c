-- Every live (unarchived) template, by name.
SELECT template_id, name, description, version, definition, archived, created_at, updated_at, last_sequence
  FROM template_catalogue
 WHERE archived = 0
 ORDER BY name, created_at DESC, template_id DESC
