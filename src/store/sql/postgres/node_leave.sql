-- A node stopping: without its row its runs are free at once (the others
-- take them over at their next look instead of waiting for it to be dead).
-- Only this process's row ($2).
DELETE FROM nodes WHERE id = $1 AND incarnation = $2
