//! Fork: the child has only the forking thread, a copy of the parent's
//! memory and the parent's segment mapped. It gets its own segment and a
//! fresh collector; nothing the parent's other threads held stays locked.

use std::sync::Once;

extern "C" fn child() {
    crate::segment::reset_after_fork();
    crate::sampler::reset_after_fork();
    crate::collector::reset_after_fork();
    crate::wrappers::reset_after_fork();
    crate::budget::reset_after_fork();
    crate::priority::reset_after_fork();
}

/// Registers the fork handler and the exit flush, once.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registering plain extern "C" functions.
        unsafe {
            libc::pthread_atfork(None, None, Some(child));
            libc::atexit(crate::collector::flush_at_exit);
        }
    });
}
