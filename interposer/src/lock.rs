//! A lock for the shim's registries that a forked child can take over: the
//! child has one thread, so whatever the parent's other threads held is
//! released in the fork handler. Never taken on the launch path; the
//! registries never hold it across a driver call (the collector's state does,
//! and only the exit flush contends for it, with `try_with`).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering::*};

pub struct ForkLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `locked`.
unsafe impl<T: Send> Sync for ForkLock<T> {}

impl<T> ForkLock<T> {
    pub const fn new(value: T) -> Self {
        ForkLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Runs `f` with the value; waits (yielding) while another thread has it.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        while self
            .locked
            .compare_exchange_weak(false, true, Acquire, Relaxed)
            .is_err()
        {
            std::thread::yield_now();
        }
        struct Unlock<'a>(&'a AtomicBool);
        impl Drop for Unlock<'_> {
            fn drop(&mut self) {
                self.0.store(false, Release);
            }
        }
        let _u = Unlock(&self.locked);
        // SAFETY: we hold the lock.
        f(unsafe { &mut *self.value.get() })
    }

    /// Like `with`, but gives up if the lock is taken.
    pub fn try_with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        if self
            .locked
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_err()
        {
            return None;
        }
        // SAFETY: we hold the lock.
        let r = f(unsafe { &mut *self.value.get() });
        self.locked.store(false, Release);
        Some(r)
    }

    /// In a forked child only: releases a lock a vanished thread held.
    pub fn force_unlock(&self) {
        self.locked.store(false, Release);
    }
}
