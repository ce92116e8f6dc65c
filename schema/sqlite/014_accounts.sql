-- Accounts (issue #9): users, their API tokens, who owns each run.
--
-- `users` and `api_tokens` are the read model of the User aggregate's
-- events (the `accounts` projection: rebuilt from the log like the
-- others). A token is stored as its SHA-256 digest only.
CREATE TABLE IF NOT EXISTS users
(
  user_id    text    NOT NULL PRIMARY KEY,
  name       text    NOT NULL,
  role       text    NOT NULL,
  created_at integer NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS users_name ON users (name);

CREATE TABLE IF NOT EXISTS api_tokens
(
  token_id   text    NOT NULL PRIMARY KEY,
  user_id    text    NOT NULL,
  name       text    NOT NULL,
  digest     text    NOT NULL,
  read_only  integer NOT NULL,
  expires_at integer,
  created_at integer NOT NULL,
  revoked_at integer
) STRICT;
CREATE INDEX IF NOT EXISTS api_tokens_digest ON api_tokens (digest);
CREATE INDEX IF NOT EXISTS api_tokens_user ON api_tokens (user_id, created_at);

-- When each token was last used: not an event (it changes on every use;
-- written at most once a minute per token) and not a projection (a rebuild
-- keeps it).
CREATE TABLE IF NOT EXISTS token_use
(
  token_id     text    NOT NULL PRIMARY KEY,
  last_used_at integer NOT NULL
) STRICT;

-- Single-use, short-lived WebSocket tickets for browsers: the ticket's
-- digest, and the digest of the token it stands for.
CREATE TABLE IF NOT EXISTS ws_tickets
(
  digest       text    NOT NULL PRIMARY KEY,
  token_digest text    NOT NULL,
  expires_at integer NOT NULL
) STRICT;

-- Who started each run (NULL: a run recorded before accounts existed, or
-- under --no-auth: visible to admins only). Rows of older runs stay NULL,
-- which is what their events say.
ALTER TABLE run_summaries ADD COLUMN owner text;
CREATE INDEX IF NOT EXISTS run_summaries_owner ON run_summaries (owner, created_at DESC, run_id DESC);
