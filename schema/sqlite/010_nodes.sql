-- Many nodes on one PostgreSQL (issue #8; docs/adr/0007). SQLite serves one
-- process (a second `serve` is refused), so it needs no hosts or
-- fencing; the tables exist so that both backends have one schema.
CREATE TABLE IF NOT EXISTS nodes
(
    id           TEXT PRIMARY KEY,
    address      TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS run_hosts
(
    run_id  TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    epoch   INTEGER NOT NULL,
    since   TEXT NOT NULL
);
