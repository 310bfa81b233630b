-- Each node's announcement of the models it runs, renewed while it lives, so that every node
-- accepts requests for models only other nodes have.
CREATE TABLE nodes (
    id         TEXT PRIMARY KEY,
    catalog    TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    seen_at    BIGINT NOT NULL
);
