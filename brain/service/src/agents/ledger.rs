//! The brain's command ledger: every command it issues and every result an
//! agent reports, in SQLite (or in PostgreSQL shared by the brain's
//! replicas, [`crate::database`]), committed before anything depends on it.
//!
//! A command is committed before it is sent, so a command the brain accepted
//! survives a crash and is sent again once its node reconnects. A result is
//! committed before the brain acknowledges it, so the agent forgets only
//! results that are on disk; until then it resends them after every
//! reconnection. Writes go through one thread that commits whatever has
//! queued up in one transaction (group commit): one `fsync` covers many
//! results when thousands of agents answer at once.
//!
//! The SQLite database is plain SQLite (WAL, `synchronous = FULL`);
//! operators can read it with `sqlite3` (or `psql`): command kinds and
//! outcomes are stored as JSON.

use crate::database::Postgres;
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

/// The ledger's tables, in one database's words for an id column and its
/// integers (SQLite's or PostgreSQL's).
fn schema(id: &str, int: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS commands (
            id {id},
            node TEXT NOT NULL,
            kind TEXT NOT NULL,
            issued_unix_ns {int} NOT NULL);
        CREATE TABLE IF NOT EXISTS results (
            id {int} PRIMARY KEY REFERENCES commands(id),
            node TEXT NOT NULL,
            outcome TEXT NOT NULL,
            recorded_unix_ns {int} NOT NULL);
        CREATE TABLE IF NOT EXISTS meta (
            key TEXT PRIMARY KEY,
            value {int} NOT NULL);"
    )
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `path`.
    pub fn open(path: &Path) -> Result<(Ledger, Recovered), LinkError> {
        let conn = Connection::open(path)
            .map_err(|e| LinkError::Ledger(format!("cannot open {}: {e}", path.display())))?;
        Self::start_sqlite(conn, &path.display().to_string())
    }

    /// A ledger that lives in memory only (tests, `--ledger` not given).
    pub fn in_memory() -> Result<(Ledger, Recovered), LinkError> {
        let conn = Connection::open_in_memory()
            .map_err(|e| LinkError::Ledger(format!("in-memory ledger: {e}")))?;
        Self::start_sqlite(conn, ":memory:")
    }

    /// Opens (creating if needed) the ledger in PostgreSQL, writing as the
    /// holder of `pg`'s epoch. Blocks while it connects.
    pub fn open_postgres(pg: &Postgres) -> Result<(Ledger, Recovered), LinkError> {
        let what = pg.describe().to_string();
        let pg = pg.clone();
        Self::start(&what, move || {
            let mut c = pg.connect().map_err(|e| e.to_string())?;
            pg.create(&mut c, &schema("BIGSERIAL PRIMARY KEY", "BIGINT"))
                .map_err(|e| e.to_string())?;
            Ok(PgStore { c, pg })
        })
    }

    fn start_sqlite(conn: Connection, what: &str) -> Result<(Ledger, Recovered), LinkError> {
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; {}",
            schema("INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER")
        ))
        .map_err(|e| LinkError::Ledger(format!("{what}: {e}")))?;
        Self::start(what, move || Ok(conn))
    }

    /// Starts the writer thread on the store `open` makes there, and reads
    /// what the ledger holds.
    fn start<S: Store>(
        what: &str,
        open: impl FnOnce() -> Result<S, String> + Send + 'static,
    ) -> Result<(Ledger, Recovered), LinkError> {
        let mut id = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
            .map_err(|_| LinkError::Ledger(format!("{what}: no random bytes for its id")))?;
        let fresh = i64::from_le_bytes(id);
        let (ops, rx) = mpsc::channel();
        let (up, ready) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("vagus-ledger".into())
            .spawn(move || {
                let mut store = match open() {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = up.send(Err(e));
                        return;
                    }
                };
                let mut recovered = None;
                let r = store.batch(&mut |tx| {
                    recovered = Some(recover(tx, fresh)?);
                    Ok(())
                });
                let _ = up.send(r.and_then(|()| recovered.ok_or_else(|| "nothing read".into())));
                writer(store, rx)
            })
            .map_err(|e| LinkError::Ledger(format!("cannot start the ledger thread: {e}")))?;
        let recovered = ready
            .recv()
            .map_err(|_| LinkError::Ledger(format!("{what}: the ledger thread stopped")))?
            .map_err(|e| LinkError::Ledger(format!("{what}: {e}")))?;
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

/// The ledger's statements inside one transaction, in SQLite or PostgreSQL.
trait Tx {
    /// The ledger's id: the one stored, or `fresh`, stored now.
    fn ledger_id(&mut self, fresh: i64) -> Result<i64, String>;
    /// Commands without a result, in id order: (id, node, kind).
    fn pending(&mut self) -> Result<Vec<(i64, String, String)>, String>;
    fn results(&mut self) -> Result<i64, String>;
    /// Stores a command; its new id.
    fn issue(&mut self, node: &str, kind: &str, unix_ns: i64) -> Result<i64, String>;
    /// The node command `id` was issued to.
    fn issued_to(&mut self, id: i64) -> Result<Option<String>, String>;
    /// Stores a result; false when one was stored before.
    fn store(&mut self, id: i64, node: &str, outcome: &str, unix_ns: i64) -> Result<bool, String>;
    /// A stored result: (node, outcome).
    fn result(&mut self, id: i64) -> Result<Option<(String, String)>, String>;
}

/// A database the ledger runs transactions on.
trait Store: Send + 'static {
    /// Runs `f` in one transaction and commits it.
    fn batch(&mut self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), String>)
    -> Result<(), String>;
}

fn recover(tx: &mut dyn Tx, fresh: i64) -> Result<Recovered, String> {
    let mut r = Recovered {
        ledger_id: tx.ledger_id(fresh)? as u64,
        ..Recovered::default()
    };
    for (id, node, kind) in tx.pending()? {
        let kind: CommandKind = serde_json::from_str(&kind)
            .map_err(|e| format!("stored command {id} is not a command: {e}"))?;
        let id = id as u64;
        r.pending
            .entry(node)
            .or_default()
            .insert(id, Command { id, kind });
    }
    r.results = tx.results()? as u64;
    Ok(r)
}

/// The writer: takes whatever operations have queued, applies them in one
/// transaction, commits, then answers each.
fn writer(mut store: impl Store, ops: mpsc::Receiver<Op>) {
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        while batch.len() < 4096
            && let Ok(op) = ops.try_recv()
        {
            batch.push(op);
        }
        let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
        let mut todo = batch.into_iter();
        let committed = store.batch(&mut |tx| {
            for op in todo.by_ref() {
                answers.push(apply(tx, op)?);
            }
            Ok(())
        });
        // A failed commit fails every operation of the batch: nothing in it
        // was stored, so nothing may be acknowledged.
        let err = committed.err();
        for answer in answers {
            answer(err.as_deref());
        }
        let why = format!(
            "commit failed: {}",
            err.as_deref().unwrap_or("an earlier operation failed")
        );
        for op in todo {
            refuse(op, &why);
        }
    }
}

type Answer = Box<dyn FnOnce(Option<&str>)>;

/// Answers an operation its batch's failure cut short.
fn refuse(op: Op, why: &str) {
    match op {
        Op::Issue { reply, .. } => drop(reply.send(Err(why.into()))),
        Op::Record { reply, .. } => drop(reply.send(Err(why.into()))),
        Op::Lookup { reply, .. } => drop(reply.send(Err(why.into()))),
    }
}

/// Applies one operation inside the transaction; the returned closure
/// answers it once the transaction's fate (`Some(error)` or committed) is known.
fn apply(tx: &mut dyn Tx, op: Op) -> Result<Answer, String> {
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
            let json = serde_json::to_string(&kind).map_err(|e| e.to_string())?;
            let id = tx.issue(&node, &json, unix_ns as i64)? as u64;
            answer(reply, Ok(Command { id, kind }))
        }
        Op::Record {
            node,
            result,
            unix_ns,
            reply,
        } => {
            let value = if tx.issued_to(result.id as i64)?.as_deref() != Some(node.as_str()) {
                Recorded::Unknown
            } else {
                let json = serde_json::to_string(&result.outcome).map_err(|e| e.to_string())?;
                if tx.store(result.id as i64, &node, &json, unix_ns as i64)? {
                    Recorded::New
                } else {
                    Recorded::Again
                }
            };
            answer(reply, Ok(value))
        }
        Op::Lookup { id, reply } => {
            let value = tx
                .result(id as i64)?
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

impl Store for Connection {
    fn batch(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut tx = self.transaction().map_err(|e| e.to_string())?;
        f(&mut tx)?;
        tx.commit().map_err(|e| e.to_string())
    }
}

fn sql(e: rusqlite::Error) -> String {
    e.to_string()
}

impl Tx for rusqlite::Transaction<'_> {
    fn ledger_id(&mut self, fresh: i64) -> Result<i64, String> {
        self.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('ledger_id', ?1)",
            params![fresh],
        )
        .map_err(sql)?;
        self.query_row("SELECT value FROM meta WHERE key = 'ledger_id'", [], |r| {
            r.get(0)
        })
        .map_err(sql)
    }

    fn pending(&mut self) -> Result<Vec<(i64, String, String)>, String> {
        let mut q = self
            .prepare(
                "SELECT c.id, c.node, c.kind FROM commands c
                 WHERE NOT EXISTS (SELECT 1 FROM results r WHERE r.id = c.id) ORDER BY c.id",
            )
            .map_err(sql)?;
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(sql)
    }

    fn results(&mut self) -> Result<i64, String> {
        self.query_row("SELECT COUNT(*) FROM results", [], |r| r.get(0))
            .map_err(sql)
    }

    fn issue(&mut self, node: &str, kind: &str, unix_ns: i64) -> Result<i64, String> {
        self.execute(
            "INSERT INTO commands (node, kind, issued_unix_ns) VALUES (?1, ?2, ?3)",
            params![node, kind, unix_ns],
        )
        .map_err(sql)?;
        Ok(self.last_insert_rowid())
    }

    fn issued_to(&mut self, id: i64) -> Result<Option<String>, String> {
        self.query_row("SELECT node FROM commands WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()
        .map_err(sql)
    }

    fn store(&mut self, id: i64, node: &str, outcome: &str, unix_ns: i64) -> Result<bool, String> {
        self.execute(
            "INSERT OR IGNORE INTO results (id, node, outcome, recorded_unix_ns)
             VALUES (?1, ?2, ?3, ?4)",
            params![id, node, outcome, unix_ns],
        )
        .map(|n| n == 1)
        .map_err(sql)
    }

    fn result(&mut self, id: i64) -> Result<Option<(String, String)>, String> {
        self.query_row(
            "SELECT node, outcome FROM results WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(sql)
    }
}

/// The ledger in PostgreSQL: every transaction fenced by the epoch it holds.
struct PgStore {
    c: postgres::Client,
    pg: Postgres,
}

impl Store for PgStore {
    fn batch(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), String>,
    ) -> Result<(), String> {
        self.pg.reconnect(&mut self.c);
        let mut tx = self.c.transaction().map_err(|e| e.to_string())?;
        self.pg.fence(&mut tx)?;
        f(&mut tx)?;
        tx.commit().map_err(|e| e.to_string())
    }
}

fn pg(e: postgres::Error) -> String {
    e.to_string()
}

impl Tx for postgres::Transaction<'_> {
    fn ledger_id(&mut self, fresh: i64) -> Result<i64, String> {
        self.execute(
            "INSERT INTO meta (key, value) VALUES ('ledger_id', $1) ON CONFLICT (key) DO NOTHING",
            &[&fresh],
        )
        .map_err(pg)?;
        self.query_one("SELECT value FROM meta WHERE key = 'ledger_id'", &[])
            .map(|r| r.get(0))
            .map_err(pg)
    }

    fn pending(&mut self) -> Result<Vec<(i64, String, String)>, String> {
        self.query(
            "SELECT c.id, c.node, c.kind FROM commands c
             WHERE NOT EXISTS (SELECT 1 FROM results r WHERE r.id = c.id) ORDER BY c.id",
            &[],
        )
        .map(|rows| {
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect()
        })
        .map_err(pg)
    }

    fn results(&mut self) -> Result<i64, String> {
        self.query_one("SELECT COUNT(*) FROM results", &[])
            .map(|r| r.get(0))
            .map_err(pg)
    }

    fn issue(&mut self, node: &str, kind: &str, unix_ns: i64) -> Result<i64, String> {
        self.query_one(
            "INSERT INTO commands (node, kind, issued_unix_ns) VALUES ($1, $2, $3) RETURNING id",
            &[&node, &kind, &unix_ns],
        )
        .map(|r| r.get(0))
        .map_err(pg)
    }

    fn issued_to(&mut self, id: i64) -> Result<Option<String>, String> {
        self.query_opt("SELECT node FROM commands WHERE id = $1", &[&id])
            .map(|r| r.map(|r| r.get(0)))
            .map_err(pg)
    }

    fn store(&mut self, id: i64, node: &str, outcome: &str, unix_ns: i64) -> Result<bool, String> {
        self.execute(
            "INSERT INTO results (id, node, outcome, recorded_unix_ns) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO NOTHING",
            &[&id, &node, &outcome, &unix_ns],
        )
        .map(|n| n == 1)
        .map_err(pg)
    }

    fn result(&mut self, id: i64) -> Result<Option<(String, String)>, String> {
        self.query_opt("SELECT node, outcome FROM results WHERE id = $1", &[&id])
            .map(|r| r.map(|r| (r.get(0), r.get(1))))
            .map_err(pg)
    }
}

#[cfg(test)]
mod tests {
    // What the ledger keeps across reopening, on SQLite and PostgreSQL:
    // tests/durability.rs.
    use super::*;

    #[test]
    fn an_unwritable_path_is_a_clear_error() {
        let e = Ledger::open(Path::new("/proc/vagus/ledger.sqlite"))
            .err()
            .expect("cannot create a file under /proc");
        assert!(e.to_string().contains("/proc/vagus/ledger.sqlite"), "{e}");
    }
}
