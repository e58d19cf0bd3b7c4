//! Reading what a mirror stored: Distribution's on-disk layout (blob data paths, every stored blob
//! checked whole).

use std::fs;
use std::path::{Path, PathBuf};

use super::{hex_of, sha256_digest};

/// `<root>/docker/registry/v2/blobs/sha256/<aa>/<hex>/data`
pub fn blob_data_path(root: &Path, digest: &str) -> PathBuf {
    let hex = hex_of(digest);
    root.join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// Every regular file under `dir` (recursively); empty when `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Every file under `dir` named `data` below a `blobs/sha256/<aa>/<hex>/` directory, as
/// (digest, path): the blobs a Distribution layout holds (filesystem root or s3s-fs bucket).
pub fn stored_blob_files(dir: &Path) -> Vec<(String, PathBuf)> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "data"))
        .filter_map(|p| {
            let hex = p.parent()?.file_name()?.to_str()?.to_string();
            let algo = p.parent()?.parent()?.parent()?.file_name()?.to_str()?;
            (algo == "sha256" && hex.len() == 64).then(|| (format!("sha256:{hex}"), p))
        })
        .collect()
}

/// Panics unless every stored blob under `dir` hashes to its digest; returns the digests.
pub fn assert_stored_blobs_whole(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (digest, path) in stored_blob_files(dir) {
        let data = fs::read(&path).unwrap();
        assert_eq!(
            sha256_digest(&data),
            digest,
            "{} is not whole ({} bytes)",
            path.display(),
            data.len()
        );
        out.push(digest);
    }
    out
}
