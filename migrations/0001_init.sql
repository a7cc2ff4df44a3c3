-- Datasets, models, experiments, their runs and every event they emitted.
CREATE TABLE datasets (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    filename    TEXT NOT NULL,
    file        TEXT NOT NULL,          -- stored file name inside datasets/<id>/
    format      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    rows        INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    labels      TEXT NOT NULL,          -- JSON array
    warnings    TEXT NOT NULL,          -- JSON array
    created_at  TEXT NOT NULL
);

CREATE TABLE models (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,          -- gguf | hf
    path        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);

CREATE TABLE experiments (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue order
    id          TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,          -- JSON ExperimentCreate
    status      TEXT NOT NULL,
    error       TEXT,
    created_at  TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT
);

-- An experiment keeps the datasets it trained on: they cannot be deleted under it.
CREATE TABLE experiment_datasets (
    experiment_id TEXT NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    dataset_id    TEXT NOT NULL REFERENCES datasets(id) ON DELETE RESTRICT,
    PRIMARY KEY (experiment_id, dataset_id)
);

CREATE TABLE runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id TEXT NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    idx           INTEGER NOT NULL,
    name          TEXT NOT NULL,
    status        TEXT NOT NULL,
    stage         TEXT,
    step          INTEGER NOT NULL DEFAULT 0,
    total_steps   INTEGER NOT NULL DEFAULT 0,
    loss          REAL,
    tokens_per_s  REAL,
    elapsed_s     REAL NOT NULL DEFAULT 0,
    adapter_dirs  TEXT NOT NULL DEFAULT '[]',  -- JSON array, relative to the experiment folder
    has_heads     INTEGER NOT NULL DEFAULT 0,
    UNIQUE (experiment_id, name)
);

CREATE TABLE events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id TEXT NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    run           TEXT,
    kind          TEXT NOT NULL,
    data          TEXT NOT NULL,          -- JSON api::Event
    created_at    TEXT NOT NULL
);
CREATE INDEX events_by_experiment ON events (experiment_id, id);
