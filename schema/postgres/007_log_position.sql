-- The log read in (txid, position) order by projections and by nodes
-- following each other (issue #8; docs/adr/0005): `txid` is the writing
-- transaction, `position` the identity value of the insert. A reader takes
-- only events of transactions older than every one still running in this
-- database, so a transaction that commits late can never sort below what a
-- reader has already taken.
CREATE INDEX IF NOT EXISTS events_txid_position ON events (txid, position);
