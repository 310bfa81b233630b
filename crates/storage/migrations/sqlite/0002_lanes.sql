-- Jobs run in lanes: `local` jobs one at a time on the device, `gateway` jobs (relayed to an
-- upstream provider) side by side, so neither waits behind the other.
ALTER TABLE jobs ADD COLUMN lane TEXT NOT NULL DEFAULT 'local';
CREATE INDEX jobs_lane_queue ON jobs (lane, status, created_at, id);
