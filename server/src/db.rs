//! SQLite: WAL, a busy timeout and foreign keys on every connection; the schema comes from
//! `migrations/NNNN_*.sql`, applied in order at start-up and tracked in `user_version`.
//! A database written by a newer Multitune is refused rather than misread.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use multitune_api::{Dataset, Run, Status, WorkerRef};
use rusqlite::{Connection, Row};

/// The migrations, in order; `user_version` counts those applied.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../../migrations/0001_init.sql")),
    ("0002_workers", include_str!("../../migrations/0002_workers.sql")),
];

/// The schema version this build writes.
pub fn schema_version() -> u32 {
    MIGRATIONS.len() as u32
}

/// Opens (creating) the database at `path` with our settings and migrates it.
pub fn open(path: &Path) -> anyhow::Result<Connection> {
    let mut conn = Connection::open(path)?;
    // Two connections write (the worker's and the handlers'). SQLite's own busy timeout
    // sleeps 1, 2, 5 … 100 ms between tries, so a training step's event could wait a tenth
    // of a second behind an upload's one-row insert; retrying every quarter millisecond
    // waits only as long as the lock is held (measured: a burst of 40 uploads stalled
    // training steps by up to 250 ms before).
    conn.busy_handler(Some(retry_briefly))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// How long a connection keeps retrying a locked database before it gives up.
const BUSY_FOR: Duration = Duration::from_secs(10);
const BUSY_NAP: Duration = Duration::from_micros(250);

/// SQLite's busy handler: nap briefly and try again, for up to [`BUSY_FOR`].
fn retry_briefly(attempt: i32) -> bool {
    if (attempt as u128) * BUSY_NAP.as_micros() >= BUSY_FOR.as_micros() {
        return false;
    }
    std::thread::sleep(BUSY_NAP);
    true
}

/// Applies the migrations the database lacks, each in its own transaction.
pub fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let have: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let know = schema_version();
    if have > know {
        anyhow::bail!(
            "the database has schema version {have}, newer than this Multitune understands ({know}); \
             use the Multitune that wrote it, or another data folder"
        );
    }
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql).map_err(|e| anyhow::anyhow!("migration {name}: {e}"))?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        tx.commit()?;
        tracing::info!("applied migration {name}");
    }
    Ok(())
}

/// A connection shared by request handlers (queries are short).
pub struct Db(Mutex<Connection>);

impl Db {
    /// Wraps a connection.
    pub fn new(conn: Connection) -> Self {
        Self(Mutex::new(conn))
    }

    /// Runs `f` with the connection.
    pub fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c)
    }
}

/// `now` as RFC 3339 (UTC, seconds).
pub const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%SZ', 'now')";

/// The columns of `datasets` that [`dataset_row`] maps, in its order.
pub const DATASET_COLUMNS: &str = "id, name, filename, format, kind, rows, bytes, labels, warnings, created_at";

/// A `datasets` row (selected as [`DATASET_COLUMNS`]) as the API's [`Dataset`].
pub fn dataset_row(r: &Row) -> rusqlite::Result<Dataset> {
    let json = |i: usize| -> rusqlite::Result<Vec<String>> {
        let s: String = r.get(i)?;
        Ok(serde_json::from_str(&s).unwrap_or_default())
    };
    Ok(Dataset {
        id: r.get(0)?,
        name: r.get(1)?,
        filename: r.get(2)?,
        format: r.get(3)?,
        kind: r.get(4)?,
        rows: r.get::<_, i64>(5)? as usize,
        bytes: r.get::<_, i64>(6)? as u64,
        labels: json(7)?,
        warnings: json(8)?,
        created_at: r.get(9)?,
    })
}

/// The columns of `runs` that [`run_row`] maps, in its order.
pub const RUN_COLUMNS: &str =
    "id, experiment_id, idx, name, status, stage, step, total_steps, loss, tokens_per_s, elapsed_s, adapter_dirs, has_heads, worker, attempt";

/// A `runs` row (selected as [`RUN_COLUMNS`]) as the API's [`Run`], with its ETA.
pub fn run_row(r: &Row) -> rusqlite::Result<Run> {
    let step = r.get::<_, i64>(6)? as usize;
    let total = r.get::<_, i64>(7)? as usize;
    let elapsed: f64 = r.get(10)?;
    let status = Status::parse(&r.get::<_, String>(4)?).unwrap_or(Status::Failed);
    let dirs: Vec<String> = serde_json::from_str(&r.get::<_, String>(11)?).unwrap_or_default();
    Ok(Run {
        id: r.get(0)?,
        experiment_id: r.get(1)?,
        index: r.get::<_, i64>(2)? as usize,
        name: r.get(3)?,
        status,
        stage: r.get(5)?,
        step,
        total_steps: total,
        loss: r.get(8)?,
        tokens_per_s: r.get(9)?,
        elapsed_s: elapsed,
        eta_s: (status == Status::Running && step > 0 && total > step)
            .then(|| elapsed / step as f64 * (total - step) as f64),
        has_adapter: !dirs.is_empty(),
        has_heads: r.get(12)?,
        worker: match (r.get::<_, Option<String>>(13)?, r.get::<_, Option<i64>>(14)?) {
            (Some(name), Some(attempt)) => Some(WorkerRef { name, attempt: attempt as u32 }),
            _ => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_refuses_a_newer_database() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db.sqlite");
        let c = open(&p).unwrap();
        let v: u32 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, schema_version());
        drop(c);
        open(&p).unwrap(); // applying again is a no-op
        let c = Connection::open(&p).unwrap();
        c.pragma_update(None, "user_version", schema_version() + 1).unwrap();
        drop(c);
        let err = open(&p).unwrap_err().to_string();
        assert!(err.contains("newer than this Multitune"), "{err}");
    }
}
