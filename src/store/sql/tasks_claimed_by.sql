-- How many tasks one worker holds claimed (their attempts not over yet).
SELECT COUNT(*) FROM tasks WHERE claimed_by = $1
