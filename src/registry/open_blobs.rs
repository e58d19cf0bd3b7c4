//! Stored blobs kept open for a few seconds after they were served from a local filesystem
//! store, as nginx's `open_file_cache` keeps files: a hot blob's next GET sends from the file
//! already open instead of finding and opening it again through the blocking pool (a `stat`
//! and an `open` each, two thread hand-offs a request).
//!
//! A blob is immutable, so an open file holds its bytes for as long as it stays in the store.
//! Each use asks the open file itself (`fstat`, no path walk) whether it still is: a blob that
//! `gc` or expiry removed (or that was written anew) has no links left, and is looked up as if
//! it had never been kept. At most [`OPEN_MAX`] are open, each for [`KEEP`]; a sweep closes
//! the old ones whether or not they are asked for again, so a removed blob's disk space is not
//! held past that.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::oci::Digest;
use crate::storage::ObjectMeta;

/// How long a served blob stays open.
const KEEP: Duration = Duration::from_secs(10);
/// Blobs kept open at most: file descriptors held besides the connections' own.
const OPEN_MAX: usize = 256;

struct Entry {
    file: Arc<File>,
    meta: ObjectMeta,
    at: Instant,
}

type Entries = Mutex<HashMap<Digest, Entry>>;

pub struct OpenBlobs {
    entries: Arc<Entries>,
    keep_for: Duration,
    /// A sweep is scheduled: set while there are entries to close later.
    sweeping: Arc<AtomicBool>,
}

impl Default for OpenBlobs {
    fn default() -> Self {
        Self::keeping_for(KEEP)
    }
}

fn lock(entries: &Entries) -> std::sync::MutexGuard<'_, HashMap<Digest, Entry>> {
    entries.lock().unwrap_or_else(|e| e.into_inner())
}

impl OpenBlobs {
    fn keeping_for(keep_for: Duration) -> Self {
        OpenBlobs {
            entries: Arc::default(),
            keep_for,
            sweeping: Arc::default(),
        }
    }

    /// The blob's open file and what it was when opened, if kept and still in the store.
    pub fn get(&self, digest: &Digest) -> Option<(Arc<File>, ObjectMeta)> {
        let (file, meta, at) = {
            let entries = lock(&self.entries);
            let e = entries.get(digest)?;
            (e.file.clone(), e.meta, e.at)
        };
        // Asked of the open file outside the lock: still linked where the store keeps it, at
        // the size it was opened with.
        let stored = at.elapsed() < self.keep_for
            && file.metadata().is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                m.nlink() > 0 && m.len() == meta.size
            });
        if stored {
            return Some((file, meta));
        }
        let mut entries = lock(&self.entries);
        if entries
            .get(digest)
            .is_some_and(|e| Arc::ptr_eq(&e.file, &file))
        {
            entries.remove(digest);
        }
        None
    }

    /// Keep `file`, just opened for `digest`, for the next requests.
    pub fn keep(&self, digest: &Digest, file: Arc<File>, meta: ObjectMeta) {
        {
            let mut entries = lock(&self.entries);
            if entries.len() >= OPEN_MAX && !entries.contains_key(digest) {
                let keep_for = self.keep_for;
                entries.retain(|_, e| e.at.elapsed() < keep_for);
                if entries.len() >= OPEN_MAX {
                    let oldest = entries
                        .iter()
                        .min_by_key(|(_, e)| e.at)
                        .map(|(d, _)| d.clone());
                    if let Some(d) = oldest {
                        entries.remove(&d);
                    }
                }
            }
            let at = Instant::now();
            entries.insert(digest.clone(), Entry { file, meta, at });
        }
        self.sweep_later();
    }

    /// Close the old entries every [`KEEP`] while there are any (on the runtime this is called
    /// on; the sweep ends with the last entry, or with the registry).
    fn sweep_later(&self) {
        if self.sweeping.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::SeqCst);
            return;
        };
        let entries: Weak<Entries> = Arc::downgrade(&self.entries);
        let (sweeping, keep_for) = (self.sweeping.clone(), self.keep_for);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(keep_for).await;
                let Some(entries) = entries.upgrade() else {
                    return;
                };
                let mut entries = lock(&entries);
                entries.retain(|_, e| e.at.elapsed() < keep_for);
                // Under the lock: a blob kept after this sees the flag down and sweeps anew.
                if entries.is_empty() {
                    sweeping.store(false, Ordering::SeqCst);
                    return;
                }
            }
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.entries).len()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn blob(dir: &std::path::Path, i: usize) -> (Digest, std::path::PathBuf, ObjectMeta) {
        let body = format!("blob {i}");
        let path = dir.join(format!("b{i}"));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let meta = ObjectMeta {
            size: body.len() as u64,
            modified: None,
        };
        (Digest::sha256_of(body.as_bytes()), path, meta)
    }

    fn open(path: &std::path::Path) -> Arc<File> {
        Arc::new(File::open(path).unwrap())
    }

    #[test]
    fn a_kept_blob_is_served_until_the_store_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let (d, path, meta) = blob(dir.path(), 1);
        let cache = OpenBlobs::default();
        assert!(cache.get(&d).is_none());
        cache.keep(&d, open(&path), meta);
        let (_, got) = cache.get(&d).unwrap();
        assert_eq!(got.size, meta.size);
        // `gc` removes it: the open file has no link left, and the entry goes.
        std::fs::remove_file(&path).unwrap();
        assert!(cache.get(&d).is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_blob_written_anew_is_looked_up_again() {
        let dir = tempfile::tempdir().unwrap();
        let (d, path, meta) = blob(dir.path(), 1);
        let cache = OpenBlobs::default();
        cache.keep(&d, open(&path), meta);
        // A new file renamed over the old one, as a commit publishes it.
        let fresh = dir.path().join("fresh");
        std::fs::write(&fresh, b"blob 1").unwrap();
        std::fs::rename(&fresh, &path).unwrap();
        assert!(cache.get(&d).is_none());
    }

    #[test]
    fn at_most_open_max_blobs_are_kept_open() {
        let dir = tempfile::tempdir().unwrap();
        let cache = OpenBlobs::default();
        let mut first = None;
        for i in 0..OPEN_MAX + 10 {
            let (d, path, meta) = blob(dir.path(), i);
            cache.keep(&d, open(&path), meta);
            first.get_or_insert(d);
        }
        assert_eq!(cache.len(), OPEN_MAX);
        // The oldest made room.
        assert!(cache.get(&first.unwrap()).is_none());
    }

    /// A removed blob nobody asks for again is closed all the same, so its disk space is freed.
    #[tokio::test]
    async fn old_entries_are_closed_without_being_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let cache = OpenBlobs::keeping_for(Duration::from_millis(50));
        let (d, path, meta) = blob(dir.path(), 1);
        cache.keep(&d, open(&path), meta);
        std::fs::remove_file(&path).unwrap();
        for _ in 0..100 {
            if cache.len() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(cache.len(), 0, "a removed blob is still held open");
        // And the sweep starts again for the next blob kept.
        let (d, path, meta) = blob(dir.path(), 2);
        cache.keep(&d, open(&path), meta);
        assert_eq!(cache.len(), 1);
        for _ in 0..100 {
            if cache.len() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(cache.len(), 0);
    }
}
