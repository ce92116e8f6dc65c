-- A ticket is good once: taking it deletes it.
DELETE FROM ws_tickets WHERE digest = $1 AND expires_at > $2 RETURNING token_digest
