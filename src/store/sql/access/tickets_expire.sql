DELETE FROM ws_tickets WHERE expires_at <= $1
