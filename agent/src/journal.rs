//! The commands this agent applied, kept on the node so that a restarted
//! agent never applies one twice.
//!
//! A command is keyed by (ledger, id): ids are unique within one brain's
//! ledger. Before applying one, the agent appends `applying` to
//! `<state dir>/commands-<node>.log` and syncs it; after, the outcome, and
//! syncs again; only then is the result sent. So whatever moment the agent
//! is killed at:
//!
//! - before `applying` is on disk: nothing was applied; the brain sends the
//!   command again and it is applied then;
//! - between `applying` and the outcome: it may or may not have taken
//!   effect; it is not applied again, and the brain hears that the outcome
//!   is unknown (a failure naming why);
//! - after the outcome: the brain's resend is answered with that outcome.
//!
//! The file is JSON lines, one per step; a torn last line (killed while
//! writing) is ignored. The newest [`KEEP`] commands are kept: the file is
//! rewritten with only those (to a temporary file, synced, renamed) when
//! it holds twice as many lines. An exclusive lock on it keeps a second
//! agent from using the same file.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use vagus_proto::wire::{Command, Outcome};

/// Commands remembered (their outcomes answer resends).
pub const KEEP: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("command journal {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("command journal {path} is in use by another agent (it is locked)")]
    Locked { path: String },
}

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Applying,
    Done(Outcome),
}

#[derive(Serialize, Deserialize)]
struct Line {
    ledger: u64,
    id: u64,
    /// `None`: about to apply.
    outcome: Option<Outcome>,
}

pub struct Journal {
    /// `None`: kept in memory only.
    file: Option<(File, PathBuf)>,
    steps: HashMap<(u64, u64), Step>,
    order: VecDeque<(u64, u64)>,
    lines: usize,
    /// Commands remembered ([`KEEP`]).
    keep: usize,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Journal {
    /// A journal that does not outlive the process (tests, or an agent run
    /// without a state directory).
    pub fn in_memory() -> Journal {
        Journal {
            file: None,
            steps: HashMap::new(),
            order: VecDeque::new(),
            lines: 0,
            keep: KEEP,
        }
    }

    /// Opens `dir/commands-<node>.log` (creating the directory), reads what
    /// it holds and locks it.
    pub fn open(dir: &Path, node: &str) -> Result<Journal, JournalError> {
        Self::open_keeping(dir, node, KEEP)
    }

    fn open_keeping(dir: &Path, node: &str, keep: usize) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(format!("commands-{node}.log"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io(&path))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(JournalError::Locked {
                path: path.display().to_string(),
            });
        }
        let mut j = Journal {
            keep,
            ..Journal::in_memory()
        };
        for line in std::io::BufReader::new(&file).lines() {
            let line = line.map_err(io(&path))?;
            // A torn or foreign line is skipped.
            if let Ok(l) = serde_json::from_str::<Line>(&line) {
                j.note(l.ledger, l.id, l.outcome.map_or(Step::Applying, Step::Done));
                j.lines += 1;
            }
        }
        j.file = Some((file, path));
        j.compact_if_due()?;
        Ok(j)
    }

    fn note(&mut self, ledger: u64, id: u64, step: Step) {
        if self.steps.insert((ledger, id), step).is_none() {
            self.order.push_back((ledger, id));
            if self.order.len() > self.keep
                && let Some(old) = self.order.pop_front()
            {
                self.steps.remove(&old);
            }
        }
    }

    fn append(
        &mut self,
        ledger: u64,
        id: u64,
        outcome: Option<&Outcome>,
    ) -> Result<(), JournalError> {
        let Some((file, path)) = &mut self.file else {
            return Ok(());
        };
        let mut text = serde_json::to_string(&Line {
            ledger,
            id,
            outcome: outcome.cloned(),
        })
        .expect("a journal line encodes");
        text.push('\n');
        file.write_all(text.as_bytes()).map_err(io(path))?;
        file.sync_data().map_err(io(path))?;
        self.lines += 1;
        Ok(())
    }

    /// Rewrites the file with only the remembered commands when it holds
    /// twice as many lines.
    fn compact_if_due(&mut self) -> Result<(), JournalError> {
        let Some((_, path)) = &self.file else {
            return Ok(());
        };
        if self.lines <= 2 * self.keep {
            return Ok(());
        }
        let tmp = path.with_extension("log.tmp");
        let mut text = String::new();
        for key in &self.order {
            let outcome = match &self.steps[key] {
                Step::Applying => None,
                Step::Done(o) => Some(o.clone()),
            };
            let l = Line {
                ledger: key.0,
                id: key.1,
                outcome,
            };
            text += &serde_json::to_string(&l).expect("a journal line encodes");
            text.push('\n');
        }
        {
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(text.as_bytes()).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, path).map_err(io(path))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .map_err(io(path))?;
        // SAFETY: as in `open`; the renamed file is a new inode to lock.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        let path = path.clone();
        self.file = Some((file, path));
        self.lines = self.order.len();
        Ok(())
    }

    /// The outcome to report for command `c` of `ledger`, and whether
    /// `apply` ran: the first time it runs (its start and its outcome
    /// recorded around it); after that the recorded outcome, a failure
    /// saying the outcome is unknown if the agent was stopped while
    /// applying it, or `Duplicate` once it is older than anything
    /// remembered.
    pub fn outcome(
        &mut self,
        ledger: u64,
        c: &Command,
        apply: impl FnOnce(&Command) -> Outcome,
    ) -> (Outcome, bool) {
        match self.steps.get(&(ledger, c.id)) {
            Some(Step::Done(o)) => return (o.clone(), false),
            Some(Step::Applying) => {
                return (
                    Outcome::Failed(format!(
                        "command {} was being applied when this node's agent stopped; \
                         whether it took effect is unknown, and it is not applied again",
                        c.id
                    )),
                    false,
                );
            }
            None => {}
        }
        let oldest = self
            .order
            .iter()
            .filter(|(l, _)| *l == ledger)
            .map(|(_, id)| *id)
            .min();
        if self.order.len() >= self.keep && oldest.is_some_and(|old| c.id < old) {
            // Older than anything remembered: applied long ago.
            return (Outcome::Duplicate, false);
        }
        if let Err(e) = self.append(ledger, c.id, None) {
            return (
                Outcome::Failed(format!("not applied: cannot record it first: {e}")),
                false,
            );
        }
        self.note(ledger, c.id, Step::Applying);
        let o = apply(c);
        // Kept in memory whatever happens; on disk if the disk allows.
        let stored = self.append(ledger, c.id, Some(&o));
        self.steps.insert((ledger, c.id), Step::Done(o.clone()));
        if let Err(e) = stored.and_then(|()| self.compact_if_due()) {
            eprintln!("vagus agent: {e}");
        }
        (o, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vagus_proto::wire::CommandKind;

    fn cmd(id: u64) -> Command {
        Command {
            id,
            kind: CommandKind::DrainGpu { gpu: 0 },
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vagus-journal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_reopened_journal_answers_with_the_first_outcome_and_applies_nothing() {
        let d = dir("reopen");
        let mut applied = 0;
        {
            let mut j = Journal::open(&d, "n").unwrap();
            let (o, ran) = j.outcome(7, &cmd(1), |_| {
                applied += 1;
                Outcome::Failed("first".into())
            });
            assert!(ran);
            assert_eq!(o, Outcome::Failed("first".into()));
            assert!(matches!(
                Journal::open(&d, "n"),
                Err(JournalError::Locked { .. })
            ));
        }
        let mut j = Journal::open(&d, "n").unwrap();
        let (o, ran) = j.outcome(7, &cmd(1), |_| {
            applied += 1;
            Outcome::Applied
        });
        assert_eq!(
            (o, ran, applied),
            (Outcome::Failed("first".into()), false, 1)
        );
        // Another ledger's command 1 is another command.
        let (o, ran) = j.outcome(8, &cmd(1), |_| Outcome::Applied);
        assert_eq!((o, ran), (Outcome::Applied, true));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_command_cut_off_while_applying_is_not_applied_again() {
        let d = dir("cut");
        std::fs::create_dir_all(&d).unwrap();
        // Killed after `applying` reached the disk, mid-way through the
        // outcome's line.
        std::fs::write(
            d.join("commands-n.log"),
            "{\"ledger\":7,\"id\":3,\"outcome\":null}\n{\"ledger\":7,\"id\":3,\"outc",
        )
        .unwrap();
        let mut j = Journal::open(&d, "n").unwrap();
        let (o, ran) = j.outcome(7, &cmd(3), |_| panic!("applied again"));
        assert!(!ran);
        assert!(
            matches!(&o, Outcome::Failed(why) if why.contains("unknown")),
            "{o:?}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_file_is_compacted_to_the_newest_commands() {
        let d = dir("compact");
        const KEEP: usize = 8;
        let mut j = Journal::open_keeping(&d, "n", KEEP).unwrap();
        for id in 1..=(2 * KEEP as u64 + 10) {
            j.outcome(1, &cmd(id), |_| Outcome::Applied);
        }
        let lines = std::fs::read_to_string(d.join("commands-n.log"))
            .unwrap()
            .lines()
            .count();
        assert!(lines <= 2 * KEEP + 1, "{lines} lines");
        drop(j);
        let mut j = Journal::open_keeping(&d, "n", KEEP).unwrap();
        let newest = 2 * KEEP as u64 + 10;
        assert!(!j.outcome(1, &cmd(newest), |_| panic!()).1);
        assert_eq!(j.outcome(1, &cmd(1), |_| panic!()).0, Outcome::Duplicate);
        let _ = std::fs::remove_dir_all(&d);
    }
}
