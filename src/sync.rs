//! Locks that say so when a panic poisoned them.
//!
//! Every mutex in livepush guards a few lines of bookkeeping (a table of
//! events, counts, a rate limiter). A panic while one is held is a bug; the
//! choice is between taking every other event or connection down with it
//! (`lock().unwrap()`) and serving on with the state as the panic left it.
//! livepush serves on, but never silently: the first lock after the panic
//! logs an error naming the lock (the panic itself was logged where it
//! happened) and counts it in `livepush_poisoned_locks_total`, and the
//! poison is cleared so that it is reported once per panic, not per lock.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, recovering (loudly) from a poisoned one. `what` names
/// the lock in the log.
pub fn lock<'a, T>(mutex: &'a Mutex<T>, what: &'static str) -> MutexGuard<'a, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => {
            tracing::error!(
                lock = what,
                "a panic poisoned this lock; serving on with its state as the panic left it"
            );
            metrics::counter!(crate::metrics::POISONED_LOCKS, "lock" => what).increment(1);
            mutex.clear_poison();
            poisoned.into_inner()
        }
    }
}

/// [`lock`] for a mutex owned outright (`&mut`), e.g. in `Drop`.
pub fn get_mut<'a, T>(mutex: &'a mut Mutex<T>, what: &'static str) -> &'a mut T {
    if mutex.is_poisoned() {
        tracing::error!(
            lock = what,
            "a panic poisoned this lock; serving on with its state as the panic left it"
        );
        metrics::counter!(crate::metrics::POISONED_LOCKS, "lock" => what).increment(1);
        mutex.clear_poison();
    }
    mutex.get_mut().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_recovered_once_and_reported() {
        let m = Mutex::new(1);
        let _ = std::panic::catch_unwind(|| {
            let _g = m.lock().unwrap();
            panic!("bug while holding the lock");
        });
        assert!(m.is_poisoned());
        *lock(&m, "test") += 1;
        assert!(!m.is_poisoned(), "poison cleared after being reported");
        assert_eq!(*lock(&m, "test"), 2);
    }
}
