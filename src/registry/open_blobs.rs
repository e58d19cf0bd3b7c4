//! Stored blobs kept open for a few seconds after they were served from a local filesystem
//! store, as nginx's `open_file_cache` keeps files: a hot blob's next GET sends from the file
//! already open instead of finding and opening it again through the blocking pool (a `stat`
//! and an `open` each, two thread hand-offs a request).
//!
//! A blob is immutable, so an open file holds its bytes for as long as it stays in the store.
//! Each use asks the open file itself (`fstat`, no path walk) whether it still is: a blob that
//! `gc` or expiry removed (or that was written anew) has no links left, and is looked up as if
//! it had never been kept. Entries leave after [`KEEP`], and at most [`OPEN_MAX`] are open.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};
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

#[derive(Default)]
pub struct OpenBlobs {
    entries: Mutex<HashMap<Digest, Entry>>,
}

impl OpenBlobs {
    /// The blob's open file and what it was when opened, if kept and still in the store.
    pub fn get(&self, digest: &Digest) -> Option<(Arc<File>, ObjectMeta)> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(digest)?;
        let fresh = entry.at.elapsed() < KEEP;
        // Still linked where the store keeps it, at the size it was opened with.
        let stored = fresh
            && entry.file.metadata().is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                m.nlink() > 0 && m.len() == entry.meta.size
            });
        if !stored {
            entries.remove(digest);
            return None;
        }
        Some((entry.file.clone(), entry.meta))
    }

    /// Keep `file`, just opened for `digest`, for the next requests.
    pub fn keep(&self, digest: &Digest, file: Arc<File>, meta: ObjectMeta) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= OPEN_MAX && !entries.contains_key(digest) {
            entries.retain(|_, e| e.at.elapsed() < KEEP);
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

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
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
}
