SELECT doc FROM run_details WHERE run_id = $1
