-- Newest first; keyset pagination on (created_at, template_id).
SELECT template_id, name, description, version, definition, archived, created_at, updated_at, last_sequence
  FROM template_catalogue
 WHERE ($1 IS NULL OR created_at < $1 OR (created_at = $1 AND template_id < $2))
 ORDER BY created_at DESC, template_id DESC
 LIMIT $3
