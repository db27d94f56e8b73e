//! PostgreSQL, where the brain's replicas share one audit trail and one
//! command ledger (`vagus brain --database postgres://…`); SQLite files
//! stay the embedded default.
//!
//! **Who may write.** Only the brain that took the database's latest
//! *epoch* writes. Taking over (after winning the lease, or at start when
//! there is no lease) bumps the epoch in `vagus_leader`, and every write
//! transaction of the trail and the ledger first reads it `FOR SHARE`: a
//! transaction of a deposed brain that began before the bump commits
//! before it (the bump waits for its share lock), and every one after it
//! sees the new epoch and rolls back. So the new leader, which reads the
//! trail only after its bump has committed, rebuilds from everything an
//! older leader ever acknowledged, and nothing the older one writes later
//! lands (a fencing token, kept by the database itself).
//!
//! **Durability.** Commits wait for the WAL flush (`synchronous_commit`
//! is raised to `on` for the brain's sessions where a server sets it
//! `off`), so "answered only after commit" means what it means in SQLite.
//!
//! **Threads.** The `postgres` client runs a Tokio runtime of its own per
//! connection and may not be called inside another; every connection here
//! lives on a plain thread of its own ([`Worker`], or the writers' threads).
//!
//! **TLS.** With `sslmode=require` in the settings, or a CA file given,
//! connections are TLS (rustls), and the server's certificate is verified
//! for its host name against that CA, or else Mozilla's roots: stricter
//! than libpq's `require`, which verifies nothing. Otherwise they are plain
//! (TCP or a Unix socket).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

/// Where the database is: `postgres://` URL or `key=value` settings, and
/// the CA (PEM) its server's certificate chains to, if not a public one.
#[derive(Clone, Debug)]
pub struct Database {
    pub url: String,
    pub ca: Option<PathBuf>,
}

impl Database {
    /// A database at `url`, its certificate (if TLS) from a public CA.
    pub fn at(url: &str) -> Database {
        Database {
            url: url.into(),
            ca: None,
        }
    }
}

/// What went wrong with the database, naming it (without its password).
#[derive(Debug, thiserror::Error)]
#[error("database {at}: {why}")]
pub struct DbError {
    pub at: String,
    pub why: String,
}

/// The brain's place in a PostgreSQL database: where it is, and the epoch
/// this brain holds there (see the module's notes).
#[derive(Clone, Debug)]
pub struct Postgres {
    config: postgres::Config,
    /// TLS, where asked for.
    tls: Option<Arc<rustls::ClientConfig>>,
    shown: String,
    epoch: i64,
}

const LEADER: &str = "
CREATE TABLE IF NOT EXISTS vagus_leader (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL,
    holder TEXT NOT NULL,
    since_unix_ms BIGINT NOT NULL
)";

/// A key for `pg_advisory_xact_lock`: brains creating their tables at once
/// take turns (PostgreSQL's `CREATE TABLE IF NOT EXISTS` can race).
const SCHEMA_LOCK: i64 = 0x7661_6775_7300;

impl Postgres {
    /// Connects to `url` (a `postgres://` URL or `key=value` settings) and
    /// takes the next epoch as `holder`: from now on the writes of any
    /// brain holding an earlier one are refused. Blocks: call it where a
    /// thread may wait (it runs its connection on a thread of its own).
    pub fn take_over(db: &Database, holder: &str) -> Result<Postgres, DbError> {
        let config: postgres::Config = db.url.parse().map_err(|e| DbError {
            at: "(--database)".into(),
            why: format!("not a PostgreSQL URL or key=value settings: {e}"),
        })?;
        let shown = shown(&config);
        let wants_tls =
            db.ca.is_some() || config.get_ssl_mode() == postgres::config::SslMode::Require;
        let tls = match wants_tls {
            true => Some(tls_config(db.ca.as_deref()).map_err(|why| DbError {
                at: shown.clone(),
                why,
            })?),
            false => None,
        };
        let (holder, at) = (holder.to_string(), shown.clone());
        let (cfg, t) = (config.clone(), tls.clone());
        let epoch = on_thread(move || {
            let mut c = open(&cfg, t.as_ref(), &at)?;
            let mut tx = c.transaction().map_err(|e| fail(&at, e))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .map_err(|e| fail(&at, e))?;
            tx.batch_execute(LEADER).map_err(|e| fail(&at, e))?;
            let row = tx
                .query_one(
                    "INSERT INTO vagus_leader (id, epoch, holder, since_unix_ms) VALUES (1, 1, $1, $2)
                     ON CONFLICT (id) DO UPDATE SET epoch = vagus_leader.epoch + 1,
                         holder = EXCLUDED.holder, since_unix_ms = EXCLUDED.since_unix_ms
                     RETURNING epoch",
                    &[&holder, &(crate::agents::ledger::unix_ns() as i64 / 1_000_000)],
                )
                .map_err(|e| fail(&at, e))?;
            tx.commit().map_err(|e| fail(&at, e))?;
            Ok(row.get::<_, i64>(0))
        })
        .ok_or_else(|| DbError {
            at: shown.clone(),
            why: "its connection thread stopped".into(),
        })??;
        Ok(Postgres {
            config,
            tls,
            shown,
            epoch,
        })
    }

    /// Where it is: host, port, database and user; never the password.
    pub fn describe(&self) -> &str {
        &self.shown
    }

    /// The epoch this brain holds.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// A new connection (call on a thread outside any Tokio runtime).
    pub fn connect(&self) -> Result<postgres::Client, DbError> {
        open(&self.config, self.tls.as_ref(), &self.shown)
    }

    /// Replaces a connection the server closed (a restart, a failover), if
    /// it can; a job on it fails with the reason otherwise.
    pub fn reconnect(&self, c: &mut postgres::Client) {
        if c.is_closed()
            && let Ok(fresh) = self.connect()
        {
            *c = fresh;
        }
    }

    /// Creates tables (DDL in `schema`), one brain at a time.
    pub fn create(&self, c: &mut postgres::Client, schema: &str) -> Result<(), DbError> {
        let mut tx = c.transaction().map_err(|e| self.err(e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .map_err(|e| self.err(e))?;
        tx.batch_execute(schema).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Called first in every write transaction: fails it unless this brain
    /// still holds the latest epoch (and holds that epoch's row shared, so
    /// a takeover waits for the transaction to end).
    pub fn fence(&self, tx: &mut postgres::Transaction<'_>) -> Result<(), String> {
        let row = tx
            .query_one(
                "SELECT epoch, holder FROM vagus_leader WHERE id = 1 FOR SHARE",
                &[],
            )
            .map_err(|e| e.to_string())?;
        let (now, holder): (i64, String) = (row.get(0), row.get(1));
        if now == self.epoch {
            Ok(())
        } else {
            Err(format!(
                "this brain no longer leads on {}: it holds epoch {}, {holder} took epoch {now}",
                self.shown, self.epoch
            ))
        }
    }

    pub fn err(&self, e: postgres::Error) -> DbError {
        fail(&self.shown, e)
    }
}

fn fail(at: &str, e: postgres::Error) -> DbError {
    // The server's own message (with its detail) says the most.
    let why = match e.as_db_error() {
        Some(d) => match d.detail() {
            Some(detail) => format!("{} ({detail})", d.message()),
            None => d.message().to_string(),
        },
        None => {
            // The client's own words, then each cause (a TLS handshake's
            // says which certificate check failed).
            let mut why = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                why += &format!(": {c}");
                cause = c.source();
            }
            why
        }
    };
    DbError {
        at: at.to_string(),
        why,
    }
}

/// How the database is named in messages: no password.
fn shown(c: &postgres::Config) -> String {
    let host = c
        .get_hosts()
        .first()
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        c.get_user().unwrap_or("(user)"),
        c.get_dbname().unwrap_or("(default)")
    )
}

/// TLS verifying the server against `ca` (PEM), or Mozilla's roots.
fn tls_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("the CA file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "the CA file {}: no certificate in it",
                    path.display()
                ));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("the CA file {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

fn open(
    c: &postgres::Config,
    tls: Option<&Arc<rustls::ClientConfig>>,
    at: &str,
) -> Result<postgres::Client, DbError> {
    let client = match tls {
        Some(t) => c.connect(tokio_postgres_rustls::MakeRustlsConnect::new((**t).clone())),
        None => c.connect(postgres::NoTls),
    };
    let mut client = client.map_err(|e| fail(at, e))?;
    let sync: String = client
        .query_one("SHOW synchronous_commit", &[])
        .map_err(|e| fail(at, e))?
        .get(0);
    if sync == "off" {
        client
            .batch_execute("SET synchronous_commit TO on")
            .map_err(|e| fail(at, e))?;
    }
    Ok(client)
}

/// Runs `f` on a new plain thread and waits for it (`None`: it panicked).
fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::Builder::new()
        .name("vagus-db".into())
        .spawn(f)
        .ok()?
        .join()
        .ok()
}

type Job = Box<dyn FnOnce(&mut postgres::Client) + Send>;

/// One connection on a thread of its own, for callers that may be inside a
/// Tokio runtime: [`Worker::run`] hands it a closure and waits.
pub struct Worker {
    jobs: Mutex<mpsc::Sender<Job>>,
    at: String,
}

impl Worker {
    pub fn start(pg: &Postgres, name: &str) -> Result<Worker, DbError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready, up) = mpsc::sync_channel(1);
        let pg2 = pg.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || match pg2.connect() {
                Ok(mut c) => {
                    let _ = ready.send(Ok(()));
                    while let Ok(job) = rx.recv() {
                        pg2.reconnect(&mut c);
                        job(&mut c);
                    }
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(|e| DbError {
                at: pg.shown.clone(),
                why: format!("cannot start a thread: {e}"),
            })?;
        up.recv().map_err(|_| DbError {
            at: pg.shown.clone(),
            why: "its connection thread stopped".into(),
        })??;
        Ok(Worker {
            jobs: Mutex::new(tx),
            at: pg.shown.clone(),
        })
    }

    /// Runs `f` on the connection's thread and returns what it returned.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |c| {
            let _ = tx.send(f(c));
        });
        let stopped = || DbError {
            at: self.at.clone(),
            why: "its connection thread stopped".into(),
        };
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| stopped())?;
        rx.recv().map_err(|_| stopped())?.map_err(|mut e| {
            if e.at.is_empty() {
                e.at = self.at.clone();
            }
            e
        })
    }
}
