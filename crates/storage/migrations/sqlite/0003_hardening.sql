-- Key hashes become HMAC-SHA256 under a secret kept outside the database. Rows written
-- before keep plain SHA-256 until their key is next presented, when they are rewritten.
ALTER TABLE api_keys ADD COLUMN hash_kind TEXT NOT NULL DEFAULT 'sha256';
