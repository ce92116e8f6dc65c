-- A projection's generation (issue #8): raised by each rebuild's swap, in
-- the transaction that swaps the rebuilt tables in. A follower writes a
-- page only if the generations it read its documents under are still
-- current (its page statement checks them), so a page built from the
-- tables a swap replaced is applied again from the new ones instead of
-- being written over them.
ALTER TABLE projection_positions ADD COLUMN IF NOT EXISTS generation bigint NOT NULL DEFAULT 0;
