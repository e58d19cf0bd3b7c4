//! Request coalescing: concurrent callers asking for the same key share one execution of the
//! work. The work runs in its own task, so a caller that goes away does not cancel it for the
//! others (or leave a half-done upstream exchange behind).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

pub struct Coalescer<K, V: Clone> {
    inflight: Arc<Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>>,
}

impl<K, V: Clone> Default for Coalescer<K, V> {
    fn default() -> Self {
        Coalescer {
            inflight: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Run `work` for `key`, or join the run already in flight. Returns the value and whether
    /// this caller joined an existing run.
    pub async fn run<F>(&self, key: K, work: F) -> (V, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        self.run_noting(key, work, || {}).await
    }

    /// [`run`](Self::run), calling `on_join` as soon as this caller joins a run in flight
    /// (rather than when it ends), so that the sharing can be counted while it happens.
    pub async fn run_noting<F>(&self, key: K, work: F, on_join: impl FnOnce()) -> (V, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (fut, joined) = {
            let mut map = self.inflight.lock().expect("lock");
            if let Some(f) = map.get(&key) {
                on_join();
                (f.clone(), true)
            } else {
                let map_ref = Arc::clone(&self.inflight);
                let k = key.clone();
                // The lock is held across spawn, so the task's removal cannot precede our insert.
                let handle = tokio::spawn(async move {
                    let v = work.await;
                    map_ref.lock().expect("lock").remove(&k);
                    v
                });
                let shared = async move { handle.await.expect("coalesced work panicked") }
                    .boxed()
                    .shared();
                map.insert(key, shared.clone());
                (shared, false)
            }
        };
        (fut.await, joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let c: Arc<Coalescer<&'static str, usize>> = Arc::new(Coalescer::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..8 {
            let c = c.clone();
            let runs = runs.clone();
            handles.push(tokio::spawn(async move {
                c.run("k", async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    7
                })
                .await
            }));
        }
        let mut joined = 0;
        for h in handles {
            let (v, j) = h.await.unwrap();
            assert_eq!(v, 7);
            joined += j as usize;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(joined, 7);
        // Finished work is forgotten: the next call runs again.
        let (v, j) = c.run("k", async { 8 }).await;
        assert_eq!((v, j), (8, false));
    }

    #[tokio::test]
    async fn cancelled_caller_does_not_cancel_work() {
        let c: Arc<Coalescer<u8, u8>> = Arc::new(Coalescer::default());
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let first = c.run(1, async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            d.fetch_add(1, Ordering::SeqCst);
            1
        });
        // Drop the first caller before the work finishes.
        let _ = tokio::time::timeout(Duration::from_millis(5), first).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }
}
