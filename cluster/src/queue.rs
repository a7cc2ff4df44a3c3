//! The shared queue in PostgreSQL: jobs leased with `FOR UPDATE SKIP LOCKED`, kept by
//! heartbeats, leased again when their worker falls silent, given up after
//! `max_attempts`; every write of a worker names its (job, attempt) and is refused once
//! the job has moved on (fencing). Workers wait on `LISTEN multitune_jobs`.
//!
//! Blocking on purpose: a worker is a thread that trains, and the server's coordinator
//! is one too; each holds its own connection.

use std::time::Duration;

use anyhow::Context;
use postgres::{Client, NoTls};

/// The migrations, in order; the `multitune_schema` table counts those applied.
pub const MIGRATIONS: &[(&str, &str)] = &[("0001_queue", include_str!("../../migrations/postgres/0001_queue.sql"))];

/// The channel workers listen on for new jobs.
const JOBS_CHANNEL: &str = "multitune_jobs";

/// Timing of leases, in the spirit of job-queue libraries: a heartbeat every 30 s, a job
/// whose worker has not sent one for 5 minutes is leased again, three attempts in all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// How often a worker confirms it still runs its job.
    pub heartbeat: Duration,
    /// How long a silent worker keeps its job.
    pub lease: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self { heartbeat: Duration::from_secs(30), lease: Duration::from_secs(300) }
    }
}

/// Attempts a job gets by default.
pub const MAX_ATTEMPTS: i32 = 3;

/// A job's state in the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Id.
    pub id: i64,
    /// The experiment it belongs to.
    pub experiment_id: String,
    /// Which part of the comparison (`multitune::strategy::Part::name`).
    pub part: String,
    /// `queued`, `running`, `done`, `failed` or `cancelled`.
    pub status: String,
    /// Leases so far.
    pub attempt: i32,
    /// The worker of the latest lease.
    pub worker: Option<String>,
    /// Artifacts prefix of the finished attempt's files.
    pub result: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A job leased by a worker: what to run, and the (job, attempt) its writes name.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Job id.
    pub job: i64,
    /// This lease's attempt number (1 for the first).
    pub attempt: i32,
    /// The experiment.
    pub experiment_id: String,
    /// The part of it.
    pub part: String,
    /// The job's payload (JSON).
    pub payload: String,
    /// Artifacts prefix of the newest checkpoint of an earlier attempt.
    pub checkpoint: Option<String>,
}

/// An event a worker sent, not yet taken by the server.
#[derive(Debug, Clone)]
pub struct JobEvent {
    /// Its id in the queue (the server keeps it to take each event once).
    pub id: i64,
    /// The experiment.
    pub experiment_id: String,
    /// The attempt that sent it.
    pub attempt: i32,
    /// The worker that sent it.
    pub worker: String,
    /// JSON `multitune_api::Event`.
    pub data: String,
}

/// A connection to the queue.
pub struct Queue {
    client: Client,
}

/// The PostgreSQL error behind `e`, said plainly (the client's own `Display` is "db error").
fn plain(e: postgres::Error) -> anyhow::Error {
    match e.as_db_error() {
        Some(db) => anyhow::anyhow!("PostgreSQL: {}", db.message()),
        None => anyhow::anyhow!("PostgreSQL: {e}"),
    }
}

impl Queue {
    /// Connects to `url` (`postgres://user:password@host:port/db`) and brings the
    /// schema up to date.
    pub fn connect(url: &str) -> anyhow::Result<Self> {
        let client = Client::connect(url, NoTls)
            .map_err(plain)
            .with_context(|| format!("connecting to the queue at {}", redact(url)))?;
        let mut q = Self { client };
        q.migrate()?;
        Ok(q)
    }

    /// Applies the migrations the database lacks, each in its own transaction, under an
    /// advisory lock (the server and workers may start together).
    fn migrate(&mut self) -> anyhow::Result<()> {
        let mut tx = self.client.transaction().map_err(plain)?;
        tx.execute("SELECT pg_advisory_xact_lock(7343812)", &[]).map_err(plain)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS multitune_schema (version INTEGER NOT NULL)").map_err(plain)?;
        let have: i32 = match tx.query_opt("SELECT version FROM multitune_schema", &[]).map_err(plain)? {
            Some(r) => r.get(0),
            None => {
                tx.execute("INSERT INTO multitune_schema VALUES (0)", &[]).map_err(plain)?;
                0
            }
        };
        let know = MIGRATIONS.len() as i32;
        if have > know {
            anyhow::bail!(
                "the queue database has schema version {have}, newer than this Multitune understands ({know}); \
                 upgrade this worker or server"
            );
        }
        for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(have as usize) {
            tx.batch_execute(sql).map_err(plain).with_context(|| format!("migration {name}"))?;
            tx.execute("UPDATE multitune_schema SET version = $1", &[&(i as i32 + 1)]).map_err(plain)?;
            tracing::info!("queue: applied migration {name}");
        }
        tx.commit().map_err(plain)?;
        Ok(())
    }

    /// Adds an experiment's jobs (`(part, payload)`) in one transaction; parts already
    /// there are left as they are, so enqueueing again after a crash adds nothing twice.
    /// Returns how many were new.
    pub fn enqueue(&mut self, experiment: &str, jobs: &[(String, String)], max_attempts: i32) -> anyhow::Result<u64> {
        let mut tx = self.client.transaction().map_err(plain)?;
        let mut added = 0;
        for (part, payload) in jobs {
            added += tx
                .execute(
                    "INSERT INTO jobs (experiment_id, part, payload, max_attempts) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (experiment_id, part) DO NOTHING",
                    &[&experiment, part, payload, &max_attempts],
                )
                .map_err(plain)?;
        }
        tx.batch_execute(&format!("NOTIFY {JOBS_CHANNEL}")).map_err(plain)?;
        tx.commit().map_err(plain)?;
        Ok(added)
    }

    /// Says that `worker` (on `device`) is alive, and starts listening for new jobs.
    pub fn register(&mut self, worker: &str, device: &str) -> anyhow::Result<()> {
        self.client
            .execute(
                "INSERT INTO workers (name, device) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET device = $2, started_at = now(), seen_at = now()",
                &[&worker, &device],
            )
            .map_err(plain)?;
        self.client.batch_execute(&format!("LISTEN {JOBS_CHANNEL}")).map_err(plain)?;
        Ok(())
    }

    /// Waits up to `timeout` for a new job to be announced.
    pub fn wait_for_jobs(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let mut n = self.client.notifications();
        let mut it = n.timeout_iter(timeout);
        use postgres::fallible_iterator::FallibleIterator;
        it.next().map_err(plain)?;
        Ok(())
    }

    /// Gives up jobs whose worker went silent for `lease` on their last attempt.
    /// Returns the ids given up.
    pub fn give_up_silent(&mut self, lease: Duration) -> anyhow::Result<Vec<i64>> {
        let rows = self
            .client
            .query(
                "UPDATE jobs SET status = 'failed', finished_at = now(),
                     error = format('worker %s stopped sending heartbeats during attempt %s of %s; given up', worker, attempt, max_attempts)
                 WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => $1) AND attempt >= max_attempts
                 RETURNING id",
                &[&lease.as_secs_f64()],
            )
            .map_err(plain)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Leases the oldest job that is queued, or whose worker has been silent for `lease`
    /// (with attempts left), to `worker`: its attempt number goes up by one.
    pub fn lease(&mut self, worker: &str, lease: Duration) -> anyhow::Result<Option<Lease>> {
        let row = self
            .client
            .query_opt(
                "WITH next AS (
                     SELECT id FROM jobs
                     WHERE status = 'queued'
                        OR (status = 'running' AND heartbeat_at < now() - make_interval(secs => $2) AND attempt < max_attempts)
                     ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
                 UPDATE jobs j SET status = 'running', attempt = j.attempt + 1, worker = $1, heartbeat_at = now(),
                     started_at = coalesce(j.started_at, now())
                 FROM next WHERE j.id = next.id
                 RETURNING j.id, j.attempt, j.experiment_id, j.part, j.payload, j.checkpoint",
                &[&worker, &lease.as_secs_f64()],
            )
            .map_err(plain)?;
        Ok(row.map(|r| Lease {
            job: r.get(0),
            attempt: r.get(1),
            experiment_id: r.get(2),
            part: r.get(3),
            payload: r.get(4),
            checkpoint: r.get(5),
        }))
    }

    /// Renews `l`; false once the job is no longer this attempt's (leased again,
    /// cancelled, given up).
    pub fn heartbeat(&mut self, l: &Lease, worker: &str) -> anyhow::Result<bool> {
        self.client.execute("UPDATE workers SET seen_at = now() WHERE name = $1", &[&worker]).map_err(plain)?;
        let n = self
            .client
            .execute(
                "UPDATE jobs SET heartbeat_at = now() WHERE id = $1 AND attempt = $2 AND status = 'running'",
                &[&l.job, &l.attempt],
            )
            .map_err(plain)?;
        Ok(n == 1)
    }

    /// Records an event of `l`; false (nothing written) once the lease is lost. The row
    /// lock makes the check and the write one step: a lease taken meanwhile waits for
    /// this write, or this write sees the new attempt and writes nothing.
    pub fn push_event(&mut self, l: &Lease, worker: &str, data: &str) -> anyhow::Result<bool> {
        let n = self
            .client
            .execute(
                "INSERT INTO job_events (job_id, attempt, worker, data)
                 SELECT id, attempt, $3, $4 FROM jobs WHERE id = $1 AND attempt = $2 AND status = 'running' FOR SHARE",
                &[&l.job, &l.attempt, &worker, &data],
            )
            .map_err(plain)?;
        Ok(n == 1)
    }

    /// Points the job at a newer checkpoint (`prefix` in the artifacts); false once the
    /// lease is lost.
    pub fn set_checkpoint(&mut self, l: &Lease, prefix: &str) -> anyhow::Result<bool> {
        self.fenced(l, "checkpoint = $3, heartbeat_at = now()", &[&prefix])
    }

    /// Finishes the job with the files under `result`, recording `events` (JSON, sent by
    /// `worker`) in the same transaction; false (and nothing changed, nothing recorded)
    /// once the lease is lost. A job finishes once: only the running attempt can, so the
    /// events that say a run finished are sent here, by the attempt whose result counts
    /// (an attempt that lost its lease after its runs ended sends none).
    pub fn finish(&mut self, l: &Lease, worker: &str, result: &str, events: &[String]) -> anyhow::Result<bool> {
        let mut tx = self.client.transaction().map_err(plain)?;
        let n = tx
            .execute(
                "UPDATE jobs SET status = 'done', result = $3, finished_at = now()
                 WHERE id = $1 AND attempt = $2 AND status = 'running'",
                &[&l.job, &l.attempt, &result],
            )
            .map_err(plain)?;
        if n != 1 {
            return Ok(false);
        }
        for data in events {
            tx.execute(
                "INSERT INTO job_events (job_id, attempt, worker, data) VALUES ($1, $2, $3, $4)",
                &[&l.job, &l.attempt, &worker, data],
            )
            .map_err(plain)?;
        }
        tx.commit().map_err(plain)?;
        Ok(true)
    }

    /// Fails the job for good with `error` (an error that another attempt would repeat);
    /// false once the lease is lost.
    pub fn fail(&mut self, l: &Lease, error: &str) -> anyhow::Result<bool> {
        self.fenced(l, "status = 'failed', error = $3, finished_at = now()", &[&error])
    }

    fn fenced(&mut self, l: &Lease, set: &str, value: &[&(dyn postgres::types::ToSql + Sync)]) -> anyhow::Result<bool> {
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&l.job, &l.attempt];
        params.extend_from_slice(value);
        let sql = format!("UPDATE jobs SET {set} WHERE id = $1 AND attempt = $2 AND status = 'running'");
        Ok(self.client.execute(sql.as_str(), &params).map_err(plain)? == 1)
    }

    /// Up to `limit` events not yet taken, oldest first.
    pub fn events(&mut self, limit: i64) -> anyhow::Result<Vec<JobEvent>> {
        let rows = self
            .client
            .query(
                "SELECT e.id, j.experiment_id, e.attempt, e.worker, e.data
                 FROM job_events e JOIN jobs j ON j.id = e.job_id ORDER BY e.id LIMIT $1",
                &[&limit],
            )
            .map_err(plain)?;
        Ok(rows
            .iter()
            .map(|r| JobEvent {
                id: r.get(0),
                experiment_id: r.get(1),
                attempt: r.get(2),
                worker: r.get(3),
                data: r.get(4),
            })
            .collect())
    }

    /// Drops events the server has taken (recorded on its side first).
    pub fn forget_events(&mut self, ids: &[i64]) -> anyhow::Result<()> {
        self.client.execute("DELETE FROM job_events WHERE id = ANY($1)", &[&ids]).map_err(plain)?;
        Ok(())
    }

    /// An experiment's jobs, in part order.
    pub fn jobs(&mut self, experiment: &str) -> anyhow::Result<Vec<Job>> {
        let rows = self
            .client
            .query(
                "SELECT id, experiment_id, part, status, attempt, worker, result, error FROM jobs
                 WHERE experiment_id = $1 ORDER BY id",
                &[&experiment],
            )
            .map_err(plain)?;
        Ok(rows
            .iter()
            .map(|r| Job {
                id: r.get(0),
                experiment_id: r.get(1),
                part: r.get(2),
                status: r.get(3),
                attempt: r.get(4),
                worker: r.get(5),
                result: r.get(6),
                error: r.get(7),
            })
            .collect())
    }

    /// Stops an experiment's unfinished jobs (their workers see it at the next
    /// heartbeat or write).
    pub fn cancel(&mut self, experiment: &str) -> anyhow::Result<u64> {
        self.client
            .execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = now()
                 WHERE experiment_id = $1 AND status IN ('queued', 'running')",
                &[&experiment],
            )
            .map_err(plain)
    }

    /// Queues an experiment's failed or cancelled jobs again, with `max_attempts` more
    /// attempts (attempt numbers keep growing: fencing relies on it); they continue
    /// from their newest checkpoint.
    pub fn retry(&mut self, experiment: &str, max_attempts: i32) -> anyhow::Result<u64> {
        let n = self
            .client
            .execute(
                "UPDATE jobs SET status = 'queued', error = NULL, finished_at = NULL, max_attempts = attempt + $2
                 WHERE experiment_id = $1 AND status IN ('failed', 'cancelled')",
                &[&experiment, &max_attempts],
            )
            .map_err(plain)?;
        self.client.batch_execute(&format!("NOTIFY {JOBS_CHANNEL}")).map_err(plain)?;
        Ok(n)
    }

    /// Removes an experiment's jobs and their events.
    pub fn forget(&mut self, experiment: &str) -> anyhow::Result<()> {
        self.client.execute("DELETE FROM jobs WHERE experiment_id = $1", &[&experiment]).map_err(plain)?;
        Ok(())
    }
}

/// `url` with any password replaced by `***` (for messages and logs).
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}
