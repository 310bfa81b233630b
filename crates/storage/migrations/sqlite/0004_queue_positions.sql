-- The queue position a queued job was last told (its latest `queued` event), so that when
-- jobs ahead of it leave the queue only those whose position changed get a new event.
ALTER TABLE jobs ADD COLUMN told_position INTEGER;
