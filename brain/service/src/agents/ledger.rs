//! The brain's command ledger: every command it issues and every result an
//! agent reports, in SQLite, committed before anything depends on it.
//!
//! A command is committed before it is sent, so a command the brain accepted
//! survives a crash and is sent again once its node reconnects. A result is
//! committed before the brain acknowledges it, so the agent forgets only
//! results that are on disk; until then it resends them after every
//! reconnection. Writes go through one thread that commits whatever has
//! queued up in one transaction (group commit): one `fsync` covers many
//! results when thousands of agents answer at once.
//!
//! The database is plain SQLite (WAL, `synchronous = FULL`); operators can
//! read it with `sqlite3`: command kinds and outcomes are stored as JSON.

use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use tokio::sync::oneshot;
use vagus_link::LinkError;
use vagus_proto::wire::{Command, CommandKind, CommandResult, Outcome};

/// What an agent's result came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Stored now.
    New,
    /// Stored before (a resend after a reconnection): nothing changed.
    Again,
    /// No command with this id was issued to this node: not stored.
    Unknown,
}

enum Op {
    Issue {
        node: String,
        kind: CommandKind,
        unix_ns: u64,
        reply: oneshot::Sender<Result<Command, String>>,
    },
    Record {
        node: String,
        result: CommandResult,
        unix_ns: u64,
        reply: oneshot::Sender<Result<Recorded, String>>,
    },
    Lookup {
        id: u64,
        reply: oneshot::Sender<Result<Option<(String, Outcome)>, String>>,
    },
}

/// What the ledger held when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The ledger's identity (random, made when the ledger was created).
    pub ledger_id: u64,
    /// Commands issued and not yet answered, by node, in id order.
    pub pending: BTreeMap<String, BTreeMap<u64, Command>>,
    /// Results stored.
    pub results: u64,
}

/// A handle to the ledger's writer thread (cheap to clone).
#[derive(Clone)]
pub struct Ledger {
    ops: mpsc::Sender<Op>,
}

fn sql(e: rusqlite::Error) -> String {
    e.to_string()
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `path`.
    pub fn open(path: &Path) -> Result<(Ledger, Recovered), LinkError> {
        let conn = Connection::open(path)
            .map_err(|e| LinkError::Ledger(format!("cannot open {}: {e}", path.display())))?;
        Self::start(conn, &path.display().to_string())
    }

    /// A ledger that lives in memory only (tests, `--ledger` not given).
    pub fn in_memory() -> Result<(Ledger, Recovered), LinkError> {
        let conn = Connection::open_in_memory()
            .map_err(|e| LinkError::Ledger(format!("in-memory ledger: {e}")))?;
        Self::start(conn, ":memory:")
    }

    fn start(conn: Connection, what: &str) -> Result<(Ledger, Recovered), LinkError> {
        let fail = |e: rusqlite::Error| LinkError::Ledger(format!("{what}: {e}"));
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS commands (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 node TEXT NOT NULL,
                 kind TEXT NOT NULL,
                 issued_unix_ns INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS results (
                 id INTEGER PRIMARY KEY REFERENCES commands(id),
                 node TEXT NOT NULL,
                 outcome TEXT NOT NULL,
                 recorded_unix_ns INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS meta (
                 key TEXT PRIMARY KEY,
                 value INTEGER NOT NULL);",
        )
        .map_err(fail)?;
        let mut id = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
            .map_err(|_| LinkError::Ledger(format!("{what}: no random bytes for its id")))?;
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('ledger_id', ?1)",
            params![i64::from_le_bytes(id)],
        )
        .map_err(fail)?;
        let recovered = recover(&conn).map_err(|e| LinkError::Ledger(format!("{what}: {e}")))?;
        let (ops, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("vagus-ledger".into())
            .spawn(move || writer(conn, rx))
            .map_err(|e| LinkError::Ledger(format!("cannot start the ledger thread: {e}")))?;
        Ok((Ledger { ops }, recovered))
    }

    async fn ask<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Op,
    ) -> Result<T, LinkError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(op(tx))
            .map_err(|_| LinkError::Ledger("the ledger thread has stopped".into()))?;
        rx.await
            .map_err(|_| LinkError::Ledger("the ledger thread has stopped".into()))?
            .map_err(LinkError::Ledger)
    }

    /// Stores a new command for `node` and returns it with its id (ids
    /// are never reused, across restarts too).
    pub async fn issue(&self, node: &str, kind: CommandKind) -> Result<Command, LinkError> {
        let node = node.to_string();
        self.ask(|reply| Op::Issue {
            node,
            kind,
            unix_ns: unix_ns(),
            reply,
        })
        .await
    }

    /// Stores `node`'s result; returns once it is committed.
    pub async fn record(&self, node: &str, result: CommandResult) -> Result<Recorded, LinkError> {
        let node = node.to_string();
        self.ask(|reply| Op::Record {
            node,
            result,
            unix_ns: unix_ns(),
            reply,
        })
        .await
    }

    /// The stored result of command `id`, with the node that reported it.
    pub async fn result(&self, id: u64) -> Result<Option<(String, Outcome)>, LinkError> {
        self.ask(|reply| Op::Lookup { id, reply }).await
    }
}

pub(crate) fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn recover(conn: &Connection) -> rusqlite::Result<Recovered> {
    let mut r = Recovered {
        ledger_id: conn.query_row(
            "SELECT value FROM meta WHERE key = 'ledger_id'",
            [],
            |row| row.get::<_, i64>(0),
        )? as u64,
        ..Recovered::default()
    };
    let mut q = conn.prepare(
        "SELECT c.id, c.node, c.kind FROM commands c
         WHERE NOT EXISTS (SELECT 1 FROM results r WHERE r.id = c.id) ORDER BY c.id",
    )?;
    let rows = q.query_map([], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (id, node, kind) = row?;
        let kind: CommandKind = serde_json::from_str(&kind).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
        })?;
        let id = id as u64;
        r.pending
            .entry(node)
            .or_default()
            .insert(id, Command { id, kind });
    }
    r.results = conn.query_row("SELECT COUNT(*) FROM results", [], |row| {
        row.get::<_, i64>(0)
    })? as u64;
    Ok(r)
}

/// The writer: takes whatever operations have queued, applies them in one
/// transaction, commits, then answers each.
fn writer(mut conn: Connection, ops: mpsc::Receiver<Op>) {
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        while batch.len() < 4096
            && let Ok(op) = ops.try_recv()
        {
            batch.push(op);
        }
        let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
        let committed = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for op in batch {
                answers.push(apply(&tx, op)?);
            }
            tx.commit()
        })();
        // A failed commit fails every operation of the batch: nothing in it
        // was stored, so nothing may be acknowledged.
        let err = committed.err().map(sql);
        for answer in answers {
            answer(err.as_deref());
        }
    }
}

type Answer = Box<dyn FnOnce(Option<&str>)>;

/// Applies one operation inside the transaction; the returned closure
/// answers it once the transaction's fate (`Some(error)` or committed) is known.
fn apply(tx: &rusqlite::Transaction<'_>, op: Op) -> rusqlite::Result<Answer> {
    fn answer<T: 'static>(
        reply: oneshot::Sender<Result<T, String>>,
        value: Result<T, String>,
    ) -> Answer {
        Box::new(move |failed: Option<&str>| {
            let _ = reply.send(match failed {
                Some(e) => Err(format!("commit failed: {e}")),
                None => value,
            });
        })
    }
    Ok(match op {
        Op::Issue {
            node,
            kind,
            unix_ns,
            reply,
        } => {
            let json = serde_json::to_string(&kind)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            tx.execute(
                "INSERT INTO commands (node, kind, issued_unix_ns) VALUES (?1, ?2, ?3)",
                params![node, json, unix_ns as i64],
            )?;
            let id = tx.last_insert_rowid() as u64;
            answer(reply, Ok(Command { id, kind }))
        }
        Op::Record {
            node,
            result,
            unix_ns,
            reply,
        } => {
            let issued_to: Option<String> = tx
                .query_row(
                    "SELECT node FROM commands WHERE id = ?1",
                    [result.id as i64],
                    |r| r.get(0),
                )
                .optional()?;
            let value = if issued_to.as_deref() != Some(node.as_str()) {
                Recorded::Unknown
            } else {
                let json = serde_json::to_string(&result.outcome)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                let n = tx.execute(
                    "INSERT OR IGNORE INTO results (id, node, outcome, recorded_unix_ns)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![result.id as i64, node, json, unix_ns as i64],
                )?;
                if n == 1 {
                    Recorded::New
                } else {
                    Recorded::Again
                }
            };
            answer(reply, Ok(value))
        }
        Op::Lookup { id, reply } => {
            let row: Option<(String, String)> = tx
                .query_row(
                    "SELECT node, outcome FROM results WHERE id = ?1",
                    [id as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let value = row
                .map(|(node, o)| {
                    serde_json::from_str::<Outcome>(&o)
                        .map(|o| (node, o))
                        .map_err(|e| format!("stored outcome of command {id}: {e}"))
                })
                .transpose();
            answer(reply, value)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn commands_and_results_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("vagus-ledger-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ledger.sqlite");
        rt().block_on(async {
            let (l, r) = Ledger::open(&path).unwrap();
            assert!(r.pending.is_empty());
            let a = l
                .issue("n1", CommandKind::DrainGpu { gpu: 0 })
                .await
                .unwrap();
            let b = l
                .issue("n1", CommandKind::DrainGpu { gpu: 1 })
                .await
                .unwrap();
            assert!(b.id > a.id);
            let ok = CommandResult {
                id: a.id,
                outcome: Outcome::Applied,
            };
            assert_eq!(l.record("n1", ok.clone()).await.unwrap(), Recorded::New);
            assert_eq!(l.record("n1", ok.clone()).await.unwrap(), Recorded::Again);
            assert_eq!(
                l.record("n2", ok).await.unwrap(),
                Recorded::Unknown,
                "a result from a node the command was not issued to"
            );
            let stray = CommandResult {
                id: 999,
                outcome: Outcome::Applied,
            };
            assert_eq!(l.record("n1", stray).await.unwrap(), Recorded::Unknown);
        });
        // The writer thread ends with its handle; the file stays.
        rt().block_on(async {
            let (l, r) = Ledger::open(&path).unwrap();
            assert_eq!(r.results, 1);
            let pending: Vec<u64> = r.pending["n1"].keys().copied().collect();
            assert_eq!(pending.len(), 1, "{r:?}");
            let c = l
                .issue("n1", CommandKind::DrainGpu { gpu: 2 })
                .await
                .unwrap();
            assert!(c.id > pending[0], "ids are not reused after a restart");
            let (node, o) = l.result(pending[0] - 1).await.unwrap().unwrap();
            assert_eq!((node.as_str(), o), ("n1", Outcome::Applied));
            assert_eq!(l.result(pending[0]).await.unwrap(), None);
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_path_is_a_clear_error() {
        let e = Ledger::open(Path::new("/proc/vagus/ledger.sqlite"))
            .err()
            .expect("cannot create a file under /proc");
        assert!(e.to_string().contains("/proc/vagus/ledger.sqlite"), "{e}");
    }
}
