-- A sink position's log identity: the event id of the message before it (checked on resume, so a
-- recreated topic is never read from its previous life's offsets) and the log epoch (bumped when a
-- recreation is found; within an epoch a position only grows, a newer epoch replaces it).
ALTER TABLE sink_offsets ADD COLUMN log_epoch integer NOT NULL DEFAULT 0 CHECK (log_epoch >= 0);
ALTER TABLE sink_offsets ADD COLUMN last_event_id uuid;
