//! Which per-core connection worker the current thread is, and values kept once per worker.
//!
//! A client connection lives on one single-threaded worker runtime from accept to close
//! (`http::workers`). An HTTP client shared by all workers drives each pooled connection on
//! the worker that opened it, so a request served on one worker often waits on another for
//! every chunk of a storage or upstream body. A [`PerCore`] client per worker keeps those
//! connections on the thread that uses them. Imports nothing from ocimirror, so the storage,
//! upstream and http layers may all use it.

use std::cell::Cell;
use std::sync::OnceLock;

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// How many connection workers this process runs: one per core, none on one core (where the
/// shared runtime serves connections itself).
pub fn workers() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores < 2 { 0 } else { cores }
    })
}

/// Mark the current thread as worker `i` (called once, on the worker's own thread).
pub fn enter(i: usize) {
    INDEX.with(|c| c.set(Some(i)));
}

/// The worker the current thread is, if it is one.
pub fn current() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// One value per connection worker, and one for every other thread (the shared runtime's
/// background tasks).
#[derive(Debug)]
pub struct PerCore<T> {
    each: Box<[T]>,
    shared: T,
}

impl<T> PerCore<T> {
    /// A value for each worker and the shared one, each made by `make`.
    pub fn try_new<E>(mut make: impl FnMut() -> Result<T, E>) -> Result<PerCore<T>, E> {
        let each = (0..workers()).map(|_| make()).collect::<Result<_, E>>()?;
        Ok(PerCore {
            each,
            shared: make()?,
        })
    }

    /// The current thread's value.
    pub fn get(&self) -> &T {
        current()
            .and_then(|i| self.each.get(i))
            .unwrap_or(&self.shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_thread_gets_its_own_value_and_other_threads_the_shared_one() {
        let mut n = 0;
        let values = PerCore::try_new(|| {
            n += 1;
            Ok::<_, ()>(n)
        })
        .unwrap();
        assert_eq!(n, workers() + 1, "one for each worker and the shared one");
        // Not a worker: the shared value, made last.
        assert_eq!(*values.get(), workers() + 1);
        let seen: Vec<usize> = (0..workers())
            .map(|i| {
                let values = &values;
                std::thread::scope(|s| {
                    s.spawn(move || {
                        enter(i);
                        *values.get()
                    })
                    .join()
                    .unwrap()
                })
            })
            .collect();
        assert_eq!(seen, (1..=workers()).collect::<Vec<_>>());
    }
}
