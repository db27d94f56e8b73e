//! The shim's shared-memory segments: `<dir>/<pid>.shm`, one per shimmed
//! process (layout in `vagus_proto::shm`). The agent maps each one, reads
//! its counters and writes its control block (the SM-time budget).
//!
//! A file that is not a segment of this version — wrong magic, version or
//! size — is skipped and counted by reason, once per file. One too short
//! or whose magic is still 0 may be being written (the shim renames a whole
//! segment into place, but other writers need not): it is tried again at
//! every scan, and a short one is counted once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use vagus_proto::shm::{self, ControlValues, Segment};

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is {len} bytes, shorter than a segment ({want})")]
    TooShort {
        path: PathBuf,
        len: u64,
        want: usize,
    },
    #[error("cannot map {path}: {source}")]
    Map {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is being created (no magic yet)")]
    NotReady { path: PathBuf },
    #[error("{path} is not a Vagus segment (magic {magic:#x})")]
    BadMagic { path: PathBuf, magic: u64 },
    #[error(
        "{path} is a version-{version} segment; this agent reads version {}",
        shm::VERSION
    )]
    BadVersion { path: PathBuf, version: u32 },
    #[error(
        "{path} says it is {size} bytes; this agent's segments are {}",
        shm::SEGMENT_BYTES
    )]
    BadSize { path: PathBuf, size: u32 },
}

impl SegmentError {
    /// A short name for counting.
    pub fn reason(&self) -> &'static str {
        match self {
            SegmentError::Open { .. } => "open",
            SegmentError::TooShort { .. } => "too short",
            SegmentError::Map { .. } => "map",
            SegmentError::NotReady { .. } => "not ready",
            SegmentError::BadMagic { .. } => "bad magic",
            SegmentError::BadVersion { .. } => "bad version",
            SegmentError::BadSize { .. } => "bad size",
        }
    }
}

/// One process's segment, mapped.
pub struct SegmentFile {
    ptr: *mut libc::c_void,
    pub path: PathBuf,
    writable: bool,
}

// SAFETY: the mapping is shared memory of atomics only; the pointer is
// never handed out except as `&Segment`.
unsafe impl Send for SegmentFile {}
unsafe impl Sync for SegmentFile {}

impl SegmentFile {
    /// Maps `path` read-write (to set its control block).
    pub fn open(path: &Path) -> Result<SegmentFile, SegmentError> {
        Self::map(path, true)
    }

    /// Maps `path` read-only.
    pub fn open_read_only(path: &Path) -> Result<SegmentFile, SegmentError> {
        Self::map(path, false)
    }

    fn map(path: &Path, writable: bool) -> Result<SegmentFile, SegmentError> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|source| SegmentError::Open {
                path: path.into(),
                source,
            })?;
        let len = f
            .metadata()
            .map_err(|source| SegmentError::Open {
                path: path.into(),
                source,
            })?
            .len();
        if len < shm::SEGMENT_BYTES as u64 {
            return Err(SegmentError::TooShort {
                path: path.into(),
                len,
                want: shm::SEGMENT_BYTES,
            });
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a shared mapping of a file we hold open, SEGMENT_BYTES long.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                shm::SEGMENT_BYTES,
                prot,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(SegmentError::Map {
                path: path.into(),
                source: std::io::Error::last_os_error(),
            });
        }
        let s = SegmentFile {
            ptr,
            path: path.into(),
            writable,
        };
        let h = &s.segment().header;
        let magic = h.magic.load(Relaxed);
        if magic == 0 {
            return Err(SegmentError::NotReady { path: path.into() });
        }
        if magic != shm::MAGIC {
            return Err(SegmentError::BadMagic {
                path: path.into(),
                magic,
            });
        }
        let version = h.version.load(Relaxed);
        if version != shm::VERSION {
            return Err(SegmentError::BadVersion {
                path: path.into(),
                version,
            });
        }
        let size = h.size.load(Relaxed);
        if size as usize != shm::SEGMENT_BYTES {
            return Err(SegmentError::BadSize {
                path: path.into(),
                size,
            });
        }
        Ok(s)
    }

    pub fn segment(&self) -> &Segment {
        // SAFETY: a mapping of SEGMENT_BYTES whose fields are all atomics.
        unsafe { &*(self.ptr as *const Segment) }
    }

    pub fn pid(&self) -> u32 {
        self.segment().header.pid.load(Relaxed)
    }

    /// Publishes new settings to the shim. Fails on a read-only mapping.
    pub fn set_control(&self, v: ControlValues) -> Result<(), SegmentError> {
        if !self.writable {
            return Err(SegmentError::Open {
                path: self.path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "mapped read-only",
                ),
            });
        }
        self.segment().control.write(v);
        Ok(())
    }
}

impl Drop for SegmentFile {
    fn drop(&mut self) {
        // SAFETY: unmapping what `map` mapped.
        unsafe { libc::munmap(self.ptr, shm::SEGMENT_BYTES) };
    }
}

fn alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// Every segment in a directory, kept mapped while its process lives.
pub struct SegmentDir {
    dir: PathBuf,
    open: HashMap<PathBuf, SegmentFile>,
    refused: HashSet<PathBuf>,
    /// Files found too short, counted and tried again at each scan.
    short: HashSet<PathBuf>,
    /// Files skipped, by reason (each file counted once).
    pub skipped: BTreeMap<&'static str, u64>,
}

impl SegmentDir {
    pub fn new(dir: PathBuf) -> SegmentDir {
        SegmentDir {
            dir,
            open: HashMap::new(),
            refused: HashSet::new(),
            short: HashSet::new(),
            skipped: BTreeMap::new(),
        }
    }

    /// Maps new segments and lets go of those whose process is gone.
    pub fn scan(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut seen = HashSet::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "shm") {
                continue;
            }
            seen.insert(path.clone());
            if self.open.contains_key(&path) || self.refused.contains(&path) {
                continue;
            }
            match SegmentFile::open(&path) {
                // Left behind by a process that has exited: not refused,
                // not followed.
                Ok(s) if !alive(s.pid()) => {
                    self.refused.insert(path);
                }
                Ok(s) => {
                    self.open.insert(path, s);
                }
                Err(SegmentError::NotReady { .. }) => {}
                Err(e @ SegmentError::TooShort { .. }) => {
                    if self.short.insert(path) {
                        *self.skipped.entry(e.reason()).or_default() += 1;
                    }
                }
                Err(e) => {
                    *self.skipped.entry(e.reason()).or_default() += 1;
                    self.refused.insert(path);
                }
            }
        }
        self.open.retain(|p, s| seen.contains(p) && alive(s.pid()));
        self.refused.retain(|p| seen.contains(p));
        self.short
            .retain(|p| seen.contains(p) && !self.open.contains_key(p));
    }

    /// The segments mapped now.
    pub fn segments(&self) -> impl Iterator<Item = &SegmentFile> {
        self.open.values()
    }

    /// The segment of process `pid`, if mapped.
    pub fn of(&self, pid: u32) -> Option<&SegmentFile> {
        self.open.values().find(|s| s.pid() == pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_found_short_is_mapped_once_it_is_whole() {
        let dir = std::env::temp_dir().join(format!("vagus-segments-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let me = std::process::id();
        let path = dir.join(format!("{me}.shm"));
        // As another writer may leave it between creating and sizing it.
        std::fs::write(&path, b"").unwrap();
        let mut segs = SegmentDir::new(dir.clone());
        segs.scan();
        segs.scan();
        assert!(segs.of(me).is_none());
        assert_eq!(segs.skipped.get("too short"), Some(&1), "counted once");
        let mut b = vec![0u8; shm::SEGMENT_BYTES];
        b[..8].copy_from_slice(&shm::MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&shm::VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(shm::SEGMENT_BYTES as u32).to_le_bytes());
        b[16..20].copy_from_slice(&me.to_le_bytes());
        std::fs::write(&path, b).unwrap();
        segs.scan();
        assert!(segs.of(me).is_some(), "mapped once whole");
        assert_eq!(segs.skipped.get("too short"), Some(&1));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
