INSERT INTO run_summaries (run_id, template_id, template_version, status, created_at, updated_at,
                           last_sequence, agents, lease_expires_at, refine, owner)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (run_id) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at,
                                   last_sequence = excluded.last_sequence,
                                   agents = excluded.agents,
                                   lease_expires_at = excluded.lease_expires_at,
                                   refine = excluded.refine,
                                   owner = excluded.owner
 WHERE run_summaries.last_sequence < excluded.last_sequence
