//! The audit trail: every decision and control action, in an embedded
//! SQLite database (WAL, `synchronous = FULL`) or in PostgreSQL shared by
//! the brain's replicas ([`crate::database`]), committed before the API
//! answers. One writer thread commits whatever has arrived as one
//! transaction (group commit), so concurrent requests share an fsync.
//!
//! Rows also carry what a restart needs: the placement as it stands after
//! the decision (or the queued request), so the brain rebuilds its state
//! from the trail.

use crate::database::{DbError, Postgres, Worker};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit trail {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("audit trail: {0}")]
    Postgres(#[from] DbError),
    #[error("audit trail: stored row {seq} is not valid JSON: {source}")]
    Corrupt { seq: i64, source: serde_json::Error },
}

/// A row to store.
#[derive(Clone, Debug)]
pub struct Row {
    pub at_ms: u64,
    pub path: String,
    pub workload: String,
    pub node: Option<String>,
    /// Who asked: the token's name.
    pub actor: String,
    pub summary: String,
    /// The decision (or control) as JSON.
    pub body: String,
    /// What a restart restores for this workload (JSON), if anything.
    pub state: Option<String>,
}

/// A stored row, as the API returns it.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Entry {
    pub seq: i64,
    pub at_ms: u64,
    pub path: String,
    pub workload: String,
    pub node: Option<String>,
    pub actor: String,
    pub summary: String,
    #[schema(value_type = Object)]
    pub decision: serde_json::Value,
}

/// `GET /v1/decisions` filters.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Filter {
    /// Only this workload's rows.
    pub workload: Option<String>,
    /// Only this path: a decision's (`direct`, `queue`, `control`, …),
    /// `event` (what agents reported and alerts), `budget`, `scale` or
    /// `reconfig` (the control loop's).
    pub path: Option<String>,
    pub node: Option<String>,
    pub actor: Option<String>,
    /// Rows after this sequence number (the last page's `next`).
    pub after: Option<u64>,
    /// At most this many (default 100).
    pub limit: Option<u32>,
}

/// What a row's `path` may be: a decision's path, `event`, `budget`,
/// `scale` or `reconfig`.
pub fn row_paths() -> impl Iterator<Item = &'static str> {
    vagus_decision::Path::ALL
        .iter()
        .map(|p| p.name())
        .chain(["event", "budget", "scale", "reconfig"])
}

impl Filter {
    /// Checks the values against the rules the document publishes; the
    /// error names the parameter.
    pub fn validate(&self) -> Result<(), vagus_decision::Invalid> {
        use vagus_decision::rules::{LOOKUP, PAGE, SEQ};
        for (name, v) in [
            ("workload", &self.workload),
            ("node", &self.node),
            ("actor", &self.actor),
        ] {
            if let Some(v) = v {
                LOOKUP.check(name, v)?;
            }
        }
        if let Some(p) = &self.path
            && !row_paths().any(|k| k == p)
        {
            return Err(vagus_decision::Invalid::new(
                "path",
                &format!(
                    "{p} is not a path; one of {}",
                    row_paths().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        if let Some(a) = self.after {
            SEQ.check("after", a)?;
        }
        if let Some(l) = self.limit {
            PAGE.check("limit", l as u64)?;
        }
        Ok(())
    }
}

/// A page of the trail, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Page {
    pub items: Vec<Entry>,
    /// Pass as `after` for the next page; `null` on the last.
    pub next: Option<i64>,
}

/// Rows to store: given, or to come from whoever reserved their place.
enum Rows {
    Now(Vec<Row>),
    Later(mpsc::Receiver<Result<Vec<Row>, String>>),
}

type Batch = (Rows, tokio::sync::oneshot::Sender<Result<(), String>>);

/// A place in the trail's order, reserved for rows not encoded yet (see
/// [`Audit::reserve`]). Dropping it unfilled fails its batch alone.
pub struct Reserved(mpsc::SyncSender<Result<Vec<Row>, String>>);

impl Reserved {
    /// Hands over the rows (or why there are none) for the reserved place.
    pub fn fill(self, rows: Result<Vec<Row>, String>) {
        let _ = self.0.send(rows);
    }
}

pub struct Audit {
    tx: Mutex<mpsc::Sender<Batch>>,
    read: Reader,
    path: String,
    /// Moves on with every commit: what a follower of the trail waits on.
    committed: tokio::sync::watch::Receiver<u64>,
}

/// Where reads go: SQLite's read connection, or a PostgreSQL connection's
/// thread.
enum Reader {
    Sqlite(Mutex<Connection>),
    Postgres(Worker),
}

/// A stored row's columns: seq, at_ms, path, workload, node, actor,
/// summary, body.
type Columns = (
    i64,
    i64,
    String,
    String,
    Option<String>,
    String,
    String,
    String,
);

/// The trail's table, in one database's words for its sequence column
/// and its integers (SQLite's or PostgreSQL's).
fn schema(seq: &str, int: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS decisions (
            seq {seq},
            at_ms {int} NOT NULL,
            path TEXT NOT NULL,
            workload TEXT NOT NULL,
            node TEXT,
            actor TEXT NOT NULL,
            summary TEXT NOT NULL,
            body TEXT NOT NULL,
            state TEXT
        );
        CREATE INDEX IF NOT EXISTS decisions_workload ON decisions (workload, seq);
        CREATE INDEX IF NOT EXISTS decisions_path ON decisions (path, seq);"
    )
}

fn open_conn(path: &Path) -> Result<Connection, rusqlite::Error> {
    let c = Connection::open(path)?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    Ok(c)
}

impl Audit {
    /// Opens (or creates) the trail at `path`; `None`: a private temporary
    /// file, gone with the process.
    pub fn open(path: Option<&Path>) -> Result<Audit, AuditError> {
        let (path, temp) = match path {
            Some(p) => (p.to_path_buf(), None),
            None => {
                let dir = std::env::temp_dir().join(format!(
                    "vagus-audit-{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos())
                        .unwrap_or(0)
                ));
                (dir.join("audit.sqlite"), Some(dir))
            }
        };
        let name = path.display().to_string();
        let err = |source| AuditError::Sqlite {
            path: name.clone(),
            source,
        };
        if let Some(d) = &temp {
            std::fs::create_dir_all(d).map_err(|e| {
                err(rusqlite::Error::InvalidPath(PathBuf::from(format!(
                    "{}: {e}",
                    d.display()
                ))))
            })?;
        }
        let w = open_conn(&path).map_err(err)?;
        w.execute_batch(&schema("INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER"))
            .map_err(err)?;
        let r = open_conn(&path).map_err(err)?;
        let (tx, rx) = mpsc::channel::<Batch>();
        let (done, committed) = tokio::sync::watch::channel(0u64);
        std::thread::Builder::new()
            .name("vagus-audit".into())
            .spawn(move || {
                writer(w, rx, done);
                if let Some(d) = temp {
                    let _ = std::fs::remove_dir_all(d);
                }
            })
            .map_err(|e| err(rusqlite::Error::InvalidPath(PathBuf::from(e.to_string()))))?;
        Ok(Audit {
            tx: Mutex::new(tx),
            read: Reader::Sqlite(Mutex::new(r)),
            path: name,
            committed,
        })
    }

    /// Opens (or creates) the trail in PostgreSQL, writing as the holder of
    /// `pg`'s epoch. Blocks while it connects.
    pub fn open_postgres(pg: &Postgres) -> Result<Audit, AuditError> {
        let read = Worker::start(pg, "vagus-audit-read")?;
        let creator = pg.clone();
        read.run(move |c| creator.create(c, &schema("BIGSERIAL PRIMARY KEY", "BIGINT")))?;
        let (tx, rx) = mpsc::channel::<Batch>();
        let (ready, up) = mpsc::sync_channel(1);
        let (done, committed) = tokio::sync::watch::channel(0u64);
        let w = pg.clone();
        std::thread::Builder::new()
            .name("vagus-audit".into())
            .spawn(move || match w.connect() {
                Ok(c) => {
                    let _ = ready.send(Ok(()));
                    writer(PgWriter { c, pg: w }, rx, done);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(|e| DbError {
                at: pg.describe().into(),
                why: format!("cannot start the writer thread: {e}"),
            })?;
        up.recv().map_err(|_| DbError {
            at: pg.describe().into(),
            why: "the writer thread stopped".into(),
        })??;
        Ok(Audit {
            tx: Mutex::new(tx),
            read: Reader::Postgres(read),
            path: pg.describe().into(),
            committed,
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Changes with every commit (its value counts them): a follower of
    /// the trail reads what is new once it changes.
    pub fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.clone()
    }

    /// Queues rows; the receiver answers once they are committed. Rows
    /// queued earlier commit no later (call under the lock that orders the
    /// decisions, await outside it).
    pub fn submit(&self, rows: Vec<Row>) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
        self.queue(Rows::Now(rows))
    }

    /// Reserves the next place in the trail for rows the caller encodes
    /// afterwards (call under the lock that orders the decisions; encode
    /// and [`Reserved::fill`] outside it): the writer commits in reserved
    /// order, waiting for a reserved place to be filled. The receiver
    /// answers once they are committed.
    pub fn reserve(&self) -> (Reserved, tokio::sync::oneshot::Receiver<Result<(), String>>) {
        let (fill, rows) = mpsc::sync_channel(1);
        (Reserved(fill), self.queue(Rows::Later(rows)))
    }

    fn queue(&self, rows: Rows) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((rows, tx));
        if let Err(mpsc::SendError((_, reply))) = sent {
            let _ = reply.send(Err("the audit writer stopped".into()));
        }
        rx
    }

    /// A page of rows matching `f`.
    pub fn page(&self, f: &Filter) -> Result<Page, AuditError> {
        let limit = f.limit.unwrap_or(100).clamp(1, 1000) as usize;
        let mut f = f.clone();
        f.limit = Some(limit as u32 + 1);
        let mut items = self.query(&f)?;
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// The highest decision sequence number the trail holds (0: none): a
    /// restarted core numbers on from it.
    pub fn last_decision_seq(&self) -> Result<u64, AuditError> {
        let v = match &self.read {
            Reader::Sqlite(c) => c
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .query_row(
                    "SELECT COALESCE(MAX(json_extract(body, '$.seq')), 0) FROM decisions WHERE state IS NOT NULL",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(|e| self.err(e))?,
            Reader::Postgres(w) => w.run(|c| {
                c.query_one(
                    "SELECT COALESCE(MAX((body::jsonb ->> 'seq')::bigint), 0) FROM decisions WHERE state IS NOT NULL",
                    &[],
                )
                .map(|r| r.get::<_, i64>(0))
                .map_err(|e| pg_err(&e))
            })?,
        };
        Ok(v.max(0) as u64)
    }

    pub fn query(&self, f: &Filter) -> Result<Vec<Entry>, AuditError> {
        let limit = f.limit.unwrap_or(100).clamp(1, 1001) as i64;
        let after = f.after.unwrap_or(0).min(i64::MAX as u64) as i64;
        let rows: Vec<Columns> = match &self.read {
            Reader::Sqlite(c) => {
                let c = c.lock().unwrap_or_else(|e| e.into_inner());
                let mut stmt = c
                    .prepare_cached(
                        "SELECT seq, at_ms, path, workload, node, actor, summary, body FROM decisions
                         WHERE (?1 IS NULL OR workload = ?1) AND (?2 IS NULL OR path = ?2)
                           AND (?3 IS NULL OR node = ?3) AND (?4 IS NULL OR actor = ?4)
                           AND seq > ?5
                         ORDER BY seq LIMIT ?6",
                    )
                    .map_err(|e| self.err(e))?;
                stmt.query_map(
                    params![f.workload, f.path, f.node, f.actor, after, limit],
                    |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                            r.get(7)?,
                        ))
                    },
                )
                .and_then(|rows| rows.collect())
                .map_err(|e| self.err(e))?
            }
            Reader::Postgres(w) => {
                let f = f.clone();
                w.run(move |c| {
                    c.query(
                        "SELECT seq, at_ms, path, workload, node, actor, summary, body FROM decisions
                         WHERE ($1::text IS NULL OR workload = $1) AND ($2::text IS NULL OR path = $2)
                           AND ($3::text IS NULL OR node = $3) AND ($4::text IS NULL OR actor = $4)
                           AND seq > $5
                         ORDER BY seq LIMIT $6",
                        &[&f.workload, &f.path, &f.node, &f.actor, &after, &limit],
                    )
                    .map(|rows| {
                        rows.iter()
                            .map(|r| {
                                (
                                    r.get(0),
                                    r.get(1),
                                    r.get(2),
                                    r.get(3),
                                    r.get(4),
                                    r.get(5),
                                    r.get(6),
                                    r.get(7),
                                )
                            })
                            .collect()
                    })
                    .map_err(|e| pg_err(&e))
                })?
            }
        };
        rows.into_iter()
            .map(|(seq, at, path, workload, node, actor, summary, body)| {
                Ok(Entry {
                    seq,
                    at_ms: at as u64,
                    path,
                    workload,
                    node,
                    actor,
                    summary,
                    decision: serde_json::from_str(&body)
                        .map_err(|source| AuditError::Corrupt { seq, source })?,
                })
            })
            .collect()
    }

    /// Every row's saved state, in order: what a restarted brain replays.
    pub fn states(&self) -> Result<Vec<(String, serde_json::Value)>, AuditError> {
        const STATES: &str =
            "SELECT seq, workload, state FROM decisions WHERE state IS NOT NULL ORDER BY seq";
        let rows: Vec<(i64, String, String)> = match &self.read {
            Reader::Sqlite(c) => {
                let c = c.lock().unwrap_or_else(|e| e.into_inner());
                let mut stmt = c.prepare(STATES).map_err(|e| self.err(e))?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .and_then(|rows| rows.collect())
                    .map_err(|e| self.err(e))?
            }
            Reader::Postgres(w) => w.run(|c| {
                c.query(STATES, &[])
                    .map(|rows| {
                        rows.iter()
                            .map(|r| (r.get(0), r.get(1), r.get(2)))
                            .collect()
                    })
                    .map_err(|e| pg_err(&e))
            })?,
        };
        rows.into_iter()
            .map(|(seq, w, s)| {
                serde_json::from_str(&s)
                    .map(|v| (w, v))
                    .map_err(|source| AuditError::Corrupt { seq, source })
            })
            .collect()
    }

    fn err(&self, source: rusqlite::Error) -> AuditError {
        AuditError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }
}

/// A failed PostgreSQL call, for a [`Worker`] job (the worker's caller
/// names the database).
fn pg_err(e: &postgres::Error) -> DbError {
    DbError {
        at: String::new(),
        why: e.to_string(),
    }
}

/// What the writer commits into: SQLite's connection or PostgreSQL's.
trait Store {
    fn commit(&mut self, batches: &[Ready]) -> Result<(), String>;
}

/// Commits batches as they come, many per transaction when they queue up.
fn writer(
    mut store: impl Store,
    rx: mpsc::Receiver<Batch>,
    committed: tokio::sync::watch::Sender<u64>,
) {
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        while batches.len() < 512 {
            match rx.try_recv() {
                Ok(b) => batches.push(b),
                Err(_) => break,
            }
        }
        // Reserved places are filled by now or soon (their encoders run
        // outside the lock); one that fails fails its batch alone.
        let mut ready = Vec::with_capacity(batches.len());
        for (rows, reply) in batches {
            let rows = match rows {
                Rows::Now(r) => Ok(r),
                Rows::Later(rx) => rx
                    .recv()
                    .unwrap_or_else(|_| Err("the decision was never encoded".into())),
            };
            match rows {
                Ok(r) => ready.push((r, reply)),
                Err(why) => {
                    let _ = reply.send(Err(why));
                }
            }
        }
        let result = store.commit(&ready);
        if result.is_ok() {
            committed.send_modify(|n| *n += 1);
        }
        for (_, reply) in ready {
            let _ = reply.send(result.clone());
        }
    }
}

type Ready = (Vec<Row>, tokio::sync::oneshot::Sender<Result<(), String>>);

impl Store for Connection {
    fn commit(&mut self, batches: &[Ready]) -> Result<(), String> {
        let tx = self.transaction().map_err(|e| e.to_string())?;
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO decisions (at_ms, path, workload, node, actor, summary, body, state)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(|e| e.to_string())?;
            for r in batches.iter().flat_map(|(rows, _)| rows) {
                ins.execute(params![
                    r.at_ms as i64,
                    r.path,
                    r.workload,
                    r.node,
                    r.actor,
                    r.summary,
                    r.body,
                    r.state
                ])
                .map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())
    }
}

/// The trail's writer in PostgreSQL: fenced by the epoch it holds.
struct PgWriter {
    c: postgres::Client,
    pg: Postgres,
}

impl Store for PgWriter {
    fn commit(&mut self, batches: &[Ready]) -> Result<(), String> {
        self.pg.reconnect(&mut self.c);
        let mut tx = self.c.transaction().map_err(|e| e.to_string())?;
        self.pg.fence(&mut tx)?;
        let ins = tx
            .prepare(
                "INSERT INTO decisions (at_ms, path, workload, node, actor, summary, body, state)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .map_err(|e| e.to_string())?;
        for r in batches.iter().flat_map(|(rows, _)| rows) {
            tx.execute(
                &ins,
                &[
                    &(r.at_ms as i64),
                    &r.path,
                    &r.workload,
                    &r.node,
                    &r.actor,
                    &r.summary,
                    &r.body,
                    &r.state,
                ],
            )
            .map_err(|e| e.to_string())?;
        }
        tx.commit().map_err(|e| e.to_string())
    }
}
