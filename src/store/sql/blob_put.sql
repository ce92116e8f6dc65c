INSERT INTO blobs (sha256, size, body) VALUES ($1, $2, $3)
ON CONFLICT (sha256) DO NOTHING
