//! Simulated XID errors: the device faults NVML reports through its event
//! API (`nvmlEventTypeXidCriticalError`). They are appended, one line each
//! (`DEVICE XID UNIX_NS`), to a log beside the state file, by
//! `vagus gpusim xid` (or [`inject`]); gpusim's NVML hands them to event
//! sets registered for them, from the moment the set was created.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The XID log of a state file.
pub fn log_path(state: &Path) -> PathBuf {
    let mut p = state.as_os_str().to_owned();
    p.push(".xid");
    PathBuf::from(p)
}

/// Appends one XID error for `device`.
pub fn inject(state: &Path, device: u32, xid: u64) -> std::io::Result<()> {
    let unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(state))?;
    // One write of one short line: appends never interleave.
    f.write_all(format!("{device} {xid} {unix_ns}\n").as_bytes())
}

/// Reads the XIDs appended since it was created.
pub struct XidReader {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl XidReader {
    /// Starts at the log's current end.
    pub fn new(state: &Path) -> XidReader {
        let path = log_path(state);
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        XidReader {
            path,
            offset,
            partial: String::new(),
        }
    }

    /// The (device, xid) pairs appended since the last call; malformed
    /// lines are skipped.
    pub fn poll(&mut self) -> Vec<(u32, u64)> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut text = String::new();
        let Ok(n) = f.read_to_string(&mut text) else {
            return Vec::new();
        };
        self.offset += n as u64;
        self.partial.push_str(&text);
        let mut out = Vec::new();
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            let mut w = line.split_whitespace();
            if let (Some(Ok(d)), Some(Ok(x))) = (w.next().map(str::parse), w.next().map(str::parse))
            {
                out.push((d, x));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_xids_are_read_once_in_order() {
        let state = std::env::temp_dir().join(format!("gpusim-xid-{}.state", std::process::id()));
        let _ = std::fs::remove_file(log_path(&state));
        inject(&state, 0, 13).unwrap();
        let mut r = XidReader::new(&state);
        assert!(r.poll().is_empty(), "only what comes after the reader");
        inject(&state, 1, 79).unwrap();
        inject(&state, 0, 48).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(log_path(&state))
            .unwrap()
            .write_all(b"junk line\n")
            .unwrap();
        assert_eq!(r.poll(), vec![(1, 79), (0, 48)]);
        assert!(r.poll().is_empty());
        std::fs::remove_file(log_path(&state)).unwrap();
    }
}
