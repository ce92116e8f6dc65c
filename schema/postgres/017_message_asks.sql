-- Agents' messages with buttons (issue #10): what a message offers the
-- user (its buttons and input), null for every other message.
ALTER TABLE run_messages ADD COLUMN IF NOT EXISTS ask jsonb;
