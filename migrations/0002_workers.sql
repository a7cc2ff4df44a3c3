-- The distributed mode: events taken from the queue keep its id (each is taken once) and
-- name the worker and attempt that sent them; a run names its latest worker and attempt.
ALTER TABLE events ADD COLUMN remote_id INTEGER;
ALTER TABLE events ADD COLUMN worker TEXT;
ALTER TABLE events ADD COLUMN attempt INTEGER;
CREATE UNIQUE INDEX events_by_remote_id ON events (remote_id) WHERE remote_id IS NOT NULL;
ALTER TABLE runs ADD COLUMN worker TEXT;
ALTER TABLE runs ADD COLUMN attempt INTEGER;
