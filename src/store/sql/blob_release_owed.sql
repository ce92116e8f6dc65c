INSERT INTO blob_releases (run_id, since_ms) VALUES ($1, $2)
ON CONFLICT (run_id) DO NOTHING
