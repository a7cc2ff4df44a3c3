-- The distributed queue: one row per job (a part of a comparison), the events workers
-- send until the server has taken them, and the workers seen.
CREATE TABLE jobs (
    id            BIGSERIAL PRIMARY KEY,
    experiment_id TEXT NOT NULL,
    part          TEXT NOT NULL,                 -- base | strategy-<i>
    payload       TEXT NOT NULL,                 -- JSON: the experiment, its model and task files
    status        TEXT NOT NULL DEFAULT 'queued', -- queued | running | done | failed | cancelled
    attempt       INTEGER NOT NULL DEFAULT 0,    -- leases so far; every write names its attempt
    max_attempts  INTEGER NOT NULL,
    worker        TEXT,
    heartbeat_at  TIMESTAMPTZ,
    checkpoint    TEXT,                          -- artifacts prefix of the newest checkpoint
    result        TEXT,                          -- artifacts prefix of the finished attempt's files
    error         TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at    TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ,
    UNIQUE (experiment_id, part)
);
CREATE INDEX jobs_by_status ON jobs (status, id);

CREATE TABLE job_events (
    id         BIGSERIAL PRIMARY KEY,
    job_id     BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempt    INTEGER NOT NULL,
    worker     TEXT NOT NULL,
    data       TEXT NOT NULL,                    -- JSON api::Event
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE workers (
    name       TEXT PRIMARY KEY,
    device     TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    seen_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
