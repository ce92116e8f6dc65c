-- The newest live (unarchived) template with this name: names are unique
-- among live templates, but an older database may hold duplicates.
SELECT template_id, name, description, version, definition, archived, created_at, updated_at, last_sequence
  FROM template_catalogue
 WHERE name = $1 AND archived = 0
 ORDER BY created_at DESC, template_id DESC
 LIMIT 1
