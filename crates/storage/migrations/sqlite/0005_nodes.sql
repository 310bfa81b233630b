-- The node that last claimed a job, kept after it ends (`node` is cleared with the lease), so a
-- job's record says where it ran.
ALTER TABLE jobs ADD COLUMN ran_on TEXT;
