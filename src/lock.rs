//! Locks that one panic does not break for everyone after it.
//!
//! A std lock held by a thread that panics is poisoned: every later
//! `lock().expect(..)` panics too. For the locks every MQTT connect and
//! every lifecycle event go through (the broker's session table,
//! subscription tree, retained messages and access rules, a session's
//! state, a connection's mailbox, the tracker's pending activity and
//! leases), one panicking connection would then end every later connect.
//! Those locks are taken through [`lock`], [`read`] and [`write`] instead,
//! which take the data as the panic left it and clear the poison. That is
//! sound for them because every change made under them is one map, tree
//! or queue operation, or a few field assignments that hold no invariant
//! across each other which a later holder relies on (a session's
//! generation only grows; a half-reset session is at worst an emptier
//! one). The recovery is logged, so the panic is not hidden.
//!
//! Sits beside `domain`: it uses nothing of the crate.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, poisoned or not.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| {
        mutex.clear_poison();
        recovered(poisoned)
    })
}

/// Takes `lock` for reading, poisoned or not.
pub(crate) fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| {
        lock.clear_poison();
        recovered(poisoned)
    })
}

/// Takes `lock` for writing, poisoned or not.
pub(crate) fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| {
        lock.clear_poison();
        recovered(poisoned)
    })
}

fn recovered<G>(poisoned: PoisonError<G>) -> G {
    tracing::error!(
        "a panic happened while a shared lock was held; going on with its data as it was left"
    );
    poisoned.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_poisoned_by_a_panic_is_taken_again_and_cleared() {
        let mutex = Mutex::new(vec![1]);
        let rw = RwLock::new(1);
        let _ = std::panic::catch_unwind(|| {
            let mut v = mutex.lock().unwrap();
            let mut n = rw.write().unwrap();
            v.push(2);
            *n = 2;
            panic!("held");
        });
        assert!(mutex.is_poisoned() && rw.is_poisoned());
        assert_eq!(*lock(&mutex), [1, 2]);
        assert_eq!(*read(&rw), 2);
        *write(&rw) = 3;
        assert!(!mutex.is_poisoned() && !rw.is_poisoned());
        assert_eq!(*rw.read().unwrap(), 3);
    }
}
