//! A snapshot of what storage holds, for an expiry pass: every blob with its size and last pull,
//! every stored manifest with what it references, and each repository's links.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use futures_util::{StreamExt, TryStreamExt};

use crate::layout;
use crate::oci::{Digest, ManifestInfo};
use crate::storage::{Storage, StorageError};

/// Storage requests a scan keeps in flight.
const CONCURRENCY: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub size: u64,
    /// The later of its last recorded pull and its commit.
    pub last_access: SystemTime,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagLinks {
    pub tag: String,
    pub current: Option<Digest>,
    pub index: Vec<Digest>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repo {
    pub name: String,
    pub revisions: Vec<Digest>,
    pub layers: Vec<Digest>,
    pub tags: Vec<TagLinks>,
}

#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub blobs: BTreeMap<Digest, Blob>,
    /// Stored manifests that some repository holds, with the blobs and child manifests they
    /// reference.
    pub manifests: BTreeMap<Digest, Vec<Digest>>,
    pub repos: Vec<Repo>,
    /// Access records whose blob is gone.
    pub orphan_markers: Vec<Digest>,
}

impl Inventory {
    pub fn total_bytes(&self) -> u64 {
        self.blobs.values().map(|b| b.size).sum()
    }
}

/// When `d` was last pulled, by its access record (None: no record, or an unreadable one).
pub async fn read_marker(storage: &dyn Storage, d: &Digest) -> Option<SystemTime> {
    let body = storage.read(&layout::access_marker(d)).await.ok()?;
    let secs: u64 = std::str::from_utf8(&body).ok()?.trim().parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

pub async fn scan(storage: &dyn Storage) -> Result<Inventory, StorageError> {
    let mut inv = Inventory::default();

    // Blobs: blobs/<alg>/<xx>/<hex>/data.
    let mut digests = Vec::new();
    for alg in storage.list(layout::BLOBS).await? {
        let alg_dir = format!("{}/{alg}", layout::BLOBS);
        for prefix in storage.list(&alg_dir).await? {
            for hex in storage.list(&format!("{alg_dir}/{prefix}")).await? {
                if let Ok(d) = Digest::parse(&format!("{alg}:{hex}")) {
                    digests.push(d);
                }
            }
        }
    }
    let stats: Vec<(Digest, Option<Blob>)> = futures_util::stream::iter(digests)
        .map(|d| async move {
            let Some(meta) = storage.stat(&layout::blob_data(&d)).await? else {
                return Ok::<_, StorageError>((d, None));
            };
            let committed = meta.modified.unwrap_or(SystemTime::UNIX_EPOCH);
            let pulled = read_marker(storage, &d).await;
            let last_access = pulled.map_or(committed, |p| p.max(committed));
            Ok((
                d,
                Some(Blob {
                    size: meta.size,
                    last_access,
                }),
            ))
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    inv.blobs = stats
        .into_iter()
        .filter_map(|(d, b)| b.map(|b| (d, b)))
        .collect();

    inv.orphan_markers = layout::digests_under(storage, layout::ACCESS)
        .await?
        .into_iter()
        .filter(|d| !inv.blobs.contains_key(d))
        .collect();

    // Repositories and their links.
    let names = layout::repositories(storage).await?;
    inv.repos = futures_util::stream::iter(names)
        .map(|name| scan_repo(storage, name))
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    inv.repos.sort_by(|a, b| a.name.cmp(&b.name));

    // What each held manifest references. One that does not parse references nothing: it is
    // then an ordinary blob to the policy.
    let held: BTreeSet<Digest> = inv
        .repos
        .iter()
        .flat_map(|r| r.revisions.iter().cloned())
        .filter(|d| inv.blobs.contains_key(d))
        .collect();
    let parsed: Vec<(Digest, Vec<Digest>)> = futures_util::stream::iter(held)
        .map(|d| async move {
            let body = match storage.read(&layout::blob_data(&d)).await {
                Ok(b) => b,
                Err(e) if e.is_not_found() => return Ok((d, None)),
                Err(e) => return Err(e),
            };
            let refs = ManifestInfo::parse(&body, None)
                .ok()
                .map(|i| i.blobs.into_iter().chain(i.children).collect());
            Ok((d, refs))
        })
        .buffer_unordered(CONCURRENCY)
        .try_filter_map(|(d, refs)| async move { Ok(refs.map(|r| (d, r))) })
        .try_collect()
        .await?;
    inv.manifests = parsed.into_iter().collect();
    Ok(inv)
}

/// One repository's links: its manifests (revisions), blobs (layers) and tags.
pub async fn scan_repo(storage: &dyn Storage, name: String) -> Result<Repo, StorageError> {
    let dir = format!("{}/{name}", layout::REPOSITORIES);
    let revisions = layout::digests_under(storage, &format!("{dir}/_manifests/revisions")).await?;
    let layers = layout::digests_under(storage, &format!("{dir}/_layers")).await?;
    let mut tags = Vec::new();
    for tag in storage.list(&format!("{dir}/_manifests/tags")).await? {
        let tag_dir = format!("{dir}/_manifests/tags/{tag}");
        let current = match storage.read(&format!("{tag_dir}/current/link")).await {
            Ok(b) => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| Digest::parse(s.trim()).ok()),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let index = layout::digests_under(storage, &format!("{tag_dir}/index")).await?;
        tags.push(TagLinks {
            tag,
            current,
            index,
        });
    }
    Ok(Repo {
        name,
        revisions,
        layers,
        tags,
    })
}
