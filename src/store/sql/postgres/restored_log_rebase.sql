-- Restamps a restored log so that it sorts before anything this server
-- writes (docs/adr/0005): every event gets transaction id 3 (the first
-- normal one), keeping the position order it was written in, and the read
-- models, whose stored positions refer to the old server, apply it again
-- from the start (re-applying is harmless). The only edit of the log.
ALTER TABLE events DISABLE TRIGGER events_append_only;
UPDATE events SET txid = '3'::xid8;
ALTER TABLE events ENABLE TRIGGER events_append_only;
DELETE FROM projection_positions;
