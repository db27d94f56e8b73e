//! A client that posts placements without pause to whichever of two brain
//! replicas answers: what each acknowledged (201 or 202), how often a
//! follower refused (503), switching to the other replica when one cannot
//! be reached. The leader-change tests (here in-process, and tests/ha.rs
//! with `vagus brain` processes) share it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Stream {
    /// Each acknowledged placement, the replica that did, and when.
    acked: Arc<Mutex<Vec<(String, usize, Instant)>>>,
    refused: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Stream {
    /// Starts posting to `addrs[first]`: `post` sends placement `name` and
    /// gives the status (an error: the replica could not be reached).
    pub fn start(
        addrs: [SocketAddr; 2],
        first: usize,
        post: impl Fn(SocketAddr, &str) -> std::io::Result<u16> + Send + 'static,
    ) -> Stream {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, r, s) = (acked.clone(), refused.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let (mut at, mut n) = (first, 0);
            while !s.load(Ordering::SeqCst) {
                n += 1;
                let name = format!("w-{n}");
                match post(addrs[at], &name) {
                    Ok(201 | 202) => a.lock().unwrap().push((name, at, Instant::now())),
                    Ok(503) => {
                        r.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Ok(st) => panic!("{name}: {st}"),
                    // Gone: try the other replica.
                    Err(_) => at = 1 - at,
                }
            }
        });
        Stream {
            acked,
            refused,
            stop,
            thread,
        }
    }

    /// How many replica `at` acknowledged.
    pub fn acked_by(&self, at: usize) -> usize {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, a, _)| *a == at)
            .count()
    }

    /// When replica `at` first acknowledged one.
    pub fn first_by(&self, at: usize) -> Option<Instant> {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .find(|(_, a, _)| *a == at)
            .map(|(_, _, t)| *t)
    }

    /// Waits until replica `at` has acknowledged `n`, failing after `within`.
    pub fn wait_for(&self, at: usize, n: usize, within: Duration) {
        let t = Instant::now();
        while self.acked_by(at) < n {
            assert!(
                t.elapsed() < within,
                "replica {at} acknowledged {} of {n} within {within:?}",
                self.acked_by(at)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops: every acknowledged placement with the replica that did, and
    /// how many requests a follower refused.
    pub fn stop(self) -> (Vec<(String, usize)>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        let acked = self
            .acked
            .lock()
            .unwrap()
            .iter()
            .map(|(n, a, _)| (n.clone(), *a))
            .collect();
        (acked, self.refused.load(Ordering::SeqCst))
    }
}
