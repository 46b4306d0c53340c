//! What a thread of the service does when it runs out of work.
//!
//! The binaries choose the allocator, and mimalloc hands a thread's freed
//! memory back to the system only when that thread collects its own heap:
//! memory another thread freed into it waits for the owner's next
//! allocation. After a burst (10,000 clients leaving, a fleet's round of
//! pings written through) the threads that did the work go quiet and the
//! burst's peak stays resident. So each long-lived thread says when it is
//! about to wait — tokio's workers when they park, the store's writer and
//! write-back threads before they block — and the binary's hook collects
//! that thread's heap. The library holds only the hook (it forbids
//! `unsafe`); without one set, [`idle`] does nothing.

use std::sync::OnceLock;

static HOOK: OnceLock<fn()> = OnceLock::new();

/// Sets what [`idle`] runs; only the first call takes effect (false for
/// any later one). The hook must be cheap when called often: it runs every
/// time a worker parks.
pub fn set_hook(hook: fn()) -> bool {
    HOOK.set(hook).is_ok()
}

/// Called by a thread that is about to wait for work.
pub fn idle() {
    if let Some(hook) = HOOK.get() {
        hook();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// Calls on this thread only: the store's threads of the tests
        /// running beside this one run the hook too, once it is set.
        static CALLS: Cell<usize> = const { Cell::new(0) };
    }

    fn count() {
        CALLS.with(|calls| calls.set(calls.get() + 1));
    }

    fn other() {}

    #[test]
    fn the_first_hook_set_is_the_one_idle_runs() {
        assert!(set_hook(count));
        assert!(!set_hook(other));
        idle();
        idle();
        assert_eq!(CALLS.with(Cell::get), 2);
    }
}
