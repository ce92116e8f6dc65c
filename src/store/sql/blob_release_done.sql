DELETE FROM blob_releases WHERE run_id = $1
