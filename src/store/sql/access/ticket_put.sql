INSERT INTO ws_tickets (digest, token_digest, expires_at) VALUES ($1, $2, $3)
