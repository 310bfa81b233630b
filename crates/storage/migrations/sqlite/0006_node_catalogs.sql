-- Each node's announcement of the models it runs, renewed while it lives, so that every node
-- accepts requests for models only other nodes have.
CREATE TABLE nodes (
    id         TEXT PRIMARY KEY,
    catalog    TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    seen_at    INTEGER NOT NULL
);
