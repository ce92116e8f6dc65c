-- Agents' messages with buttons (issue #10): what a message offers the
-- user (its buttons and input, as JSON), null for every other message.
ALTER TABLE run_messages ADD COLUMN ask text;
