//! `ocimirror ls` and `ocimirror inspect`: what the cache holds, read from storage alone (no
//! upstream, no running mirror). `ls` summarises every repository (tags, manifests, the bytes
//! they reference, the last pull); `inspect` details one repository or tag down to each blob and
//! whether it is present. Last pulls come from the access records replicas write when their
//! config has an `expiry` section; without records, commit times are shown instead. A record is
//! per digest: content shared by repositories shares its last pull.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::StreamExt;
use serde::Serialize;

use super::{Parsed, format_time, is_index};
use crate::config::Settings;
use crate::expiry::inventory::{self, read_marker};
use crate::layout;
use crate::oci::{Digest, ManifestInfo, RepoName, Tag};
use crate::storage::{Storage, StorageError};
use crate::upstream::Upstream;
use crate::util::human_bytes;

/// Storage requests kept in flight.
const CONCURRENCY: usize = 16;

/// What storage says of one digest.
#[derive(Clone, Debug, Default)]
struct Facts {
    size: Option<u64>,
    committed: Option<SystemTime>,
    pulled: Option<SystemTime>,
}

async fn facts(storage: &dyn Storage, d: &Digest) -> Result<Facts, StorageError> {
    let Some(meta) = storage.stat(&layout::blob_data(d)).await? else {
        return Ok(Facts::default());
    };
    Ok(Facts {
        size: Some(meta.size),
        committed: meta.modified,
        pulled: read_marker(storage, d).await,
    })
}

async fn facts_of(
    storage: &dyn Storage,
    digests: impl IntoIterator<Item = Digest>,
) -> Result<BTreeMap<Digest, Facts>, StorageError> {
    let results: Vec<Result<(Digest, Facts), StorageError>> = futures_util::stream::iter(digests)
        .map(|d| async move { facts(storage, &d).await.map(|f| (d, f)) })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

fn time(t: Option<SystemTime>) -> Option<String> {
    t.map(format_time)
}

/// "2025-01-01T00:00:00Z", or "never recorded (committed …)".
fn pull_text(pulled: &Option<String>, committed: &Option<String>) -> String {
    match (pulled, committed) {
        (Some(p), _) => p.clone(),
        (None, Some(c)) => format!("never recorded (committed {c})"),
        (None, None) => "never recorded".into(),
    }
}

/// The storage of `s`, opened for reading only (no directory created, nothing cleaned up).
pub async fn open_storage(s: &Settings) -> Result<Arc<dyn Storage>, String> {
    let mut s = s.clone();
    s.read_only = true;
    let b = crate::assemble::build_backends(&s)
        .await
        .map_err(|e| e.to_string())?;
    Ok(b.storage)
}

/// `REPOSITORY[:tag]`, the name as the mirror stores it (Docker Hub's `library/` added for the
/// default upstream, a configured upstream's prefix kept).
pub fn parse_target(s: &Settings, target: &str) -> Result<(RepoName, Option<Tag>), String> {
    let (name, tag) = match target.rfind(':') {
        Some(i) if !target[i..].contains('/') => (&target[..i], Some(&target[i + 1..])),
        _ => (target, None),
    };
    let name = RepoName::parse(name).map_err(|e| format!("{target:?}: {e}"))?;
    let tag = tag
        .map(Tag::parse)
        .transpose()
        .map_err(|e| format!("{target:?}: {e}"))?;
    let upstreams = crate::assemble::build_upstreams(s).map_err(|e| e.to_string())?;
    Ok((upstreams.canonical_name(&name), tag))
}

// ---- ls ------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize)]
pub struct Listing {
    /// Whether pulls are recorded (the config has an `expiry` section).
    pub pulls_recorded: bool,
    pub repositories: Vec<RepoSummary>,
    /// Every blob and manifest in storage, referenced or not.
    pub stored_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RepoSummary {
    pub name: String,
    /// Tag → the digest it points at (None: a tag whose link is unreadable).
    pub tags: BTreeMap<String, Option<String>>,
    /// Manifests the repository holds that are in storage.
    pub manifests: usize,
    /// Stored bytes of those manifests and of every blob and manifest they reference, each once.
    pub bytes: u64,
    /// The latest recorded pull of any of its manifests.
    pub last_pull: Option<String>,
    /// The latest commit of any of its manifests.
    pub last_commit: Option<String>,
}

pub async fn ls(storage: &dyn Storage, pulls_recorded: bool) -> Result<Listing, StorageError> {
    let inv = inventory::scan(storage).await?;
    let mut repositories = Vec::new();
    for repo in &inv.repos {
        let held: Vec<Digest> = repo
            .revisions
            .iter()
            .filter(|d| inv.blobs.contains_key(d))
            .cloned()
            .collect();
        let mut referenced: BTreeSet<&Digest> = held.iter().collect();
        for d in &held {
            referenced.extend(inv.manifests.get(d).into_iter().flatten());
        }
        let bytes = referenced
            .iter()
            .filter_map(|d| inv.blobs.get(*d))
            .map(|b| b.size)
            .sum();
        let f = facts_of(storage, held.iter().cloned()).await?;
        repositories.push(RepoSummary {
            name: repo.name.clone(),
            tags: repo
                .tags
                .iter()
                .map(|t| (t.tag.clone(), t.current.as_ref().map(|d| d.to_string())))
                .collect(),
            manifests: held.len(),
            bytes,
            last_pull: time(f.values().filter_map(|f| f.pulled).max()),
            last_commit: time(f.values().filter_map(|f| f.committed).max()),
        });
    }
    Ok(Listing {
        pulls_recorded,
        repositories,
        stored_bytes: inv.total_bytes(),
    })
}

impl Listing {
    pub fn text(&self) -> String {
        let mut s = String::new();
        if !self.pulls_recorded {
            s += "pulls are not recorded (the config has no expiry section): commit times shown\n";
        }
        if self.repositories.is_empty() {
            s += "no repositories cached\n";
        }
        for r in &self.repositories {
            let _ = writeln!(
                s,
                "{}  {} manifests, {}, last pull {}",
                r.name,
                r.manifests,
                human_bytes(r.bytes),
                pull_text(&r.last_pull, &r.last_commit)
            );
            for (t, d) in &r.tags {
                let _ = writeln!(
                    s,
                    "  {t} -> {}",
                    d.as_deref().unwrap_or("(unreadable link)")
                );
            }
        }
        let _ = writeln!(
            s,
            "{} repositories, {} stored",
            self.repositories.len(),
            human_bytes(self.stored_bytes)
        );
        s
    }
}

// ---- inspect -------------------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize)]
pub struct RepoDetail {
    pub repository: String,
    pub pulls_recorded: bool,
    /// Tag → digest (only the one asked for, when a tag was given).
    pub tags: BTreeMap<String, Option<String>>,
    pub manifests: Vec<ManifestDetail>,
    /// Stored bytes of these manifests and their blobs, each once.
    pub bytes: u64,
    /// Blobs and platform manifests referenced but not in storage.
    pub missing: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ManifestDetail {
    pub digest: String,
    /// Tags pointing at it.
    pub tags: Vec<String>,
    pub media_type: Option<String>,
    /// Stored size (None: not in storage).
    pub size: Option<u64>,
    pub present: bool,
    pub last_pull: Option<String>,
    pub committed: Option<String>,
    /// An index's entries.
    pub platforms: Vec<PlatformEntry>,
    /// An image's config and layers.
    pub blobs: Vec<BlobDetail>,
    /// The `verify` verdict from the stored signatures, and the key; None: no rule covers it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PlatformEntry {
    pub platform: Option<String>,
    pub digest: String,
    pub present: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct BlobDetail {
    pub digest: String,
    pub media_type: Option<String>,
    /// Size the manifest declares.
    pub size: Option<u64>,
    pub present: bool,
    pub stored_size: Option<u64>,
    pub last_pull: Option<String>,
    pub committed: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Each stored manifest's `verify` verdict, checked offline from the signatures in storage by
/// a registry built on the config's storage (indexes first, so their children show the index
/// that covers them).
pub async fn add_signatures(s: &Settings, detail: &mut RepoDetail) -> Result<(), String> {
    if s.verify.rules.is_empty() {
        return Ok(());
    }
    let mut s = s.clone();
    s.read_only = true;
    s.offline = true;
    let b = crate::assemble::build_backends(&s)
        .await
        .map_err(|e| e.to_string())?;
    let upstreams = crate::assemble::build_upstreams(&s).map_err(|e| e.to_string())?;
    let registry = crate::assemble::build_registry_on(&s, b, None, upstreams)
        .await
        .map_err(|e| e.to_string())?;
    let name = RepoName::parse(&detail.repository).map_err(|e| e.to_string())?;
    let mut order: Vec<usize> = (0..detail.manifests.len()).collect();
    order.sort_by_key(|&i| detail.manifests[i].platforms.is_empty());
    for i in order {
        let m = &mut detail.manifests[i];
        let Ok(d) = Digest::parse(&m.digest) else {
            continue;
        };
        m.signature = registry
            .signature_status(&name, &d)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One repository (every manifest it holds) or one tag of it (its manifest, and an index's
/// platform manifests that are stored).
pub async fn inspect(
    storage: &dyn Storage,
    name: &RepoName,
    tag: Option<&Tag>,
    pulls_recorded: bool,
) -> Result<RepoDetail, InspectError> {
    let repo = inventory::scan_repo(storage, name.to_string()).await?;
    if repo.revisions.is_empty() && repo.tags.is_empty() {
        return Err(InspectError::NotFound(format!(
            "no repository {name} in the cache"
        )));
    }
    let tags: BTreeMap<String, Option<String>> = repo
        .tags
        .iter()
        .filter(|t| tag.is_none_or(|want| want.as_str() == t.tag))
        .map(|t| (t.tag.clone(), t.current.as_ref().map(|d| d.to_string())))
        .collect();
    let roots: Vec<Digest> = match tag {
        None => repo.revisions.clone(),
        Some(t) => {
            let Some(links) = repo.tags.iter().find(|l| l.tag == t.as_str()) else {
                return Err(InspectError::NotFound(format!(
                    "no tag {t} of {name} in the cache"
                )));
            };
            links.current.iter().cloned().collect()
        }
    };

    // The manifests: the roots, and the stored children of indexes among them.
    let mut manifests = Vec::new();
    let mut seen = BTreeSet::new();
    let mut queue: Vec<Digest> = roots.into_iter().rev().collect();
    let mut referenced: BTreeSet<Digest> = BTreeSet::new();
    let mut missing = 0;
    while let Some(d) = queue.pop() {
        if !seen.insert(d.clone()) {
            continue;
        }
        let f = facts(storage, &d).await?;
        let body = match f.size {
            Some(_) => match storage.read(&layout::blob_data(&d)).await {
                Ok(b) => Some(b),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        let mut detail = ManifestDetail {
            digest: d.to_string(),
            tags: tags
                .iter()
                .filter(|(_, v)| v.as_deref() == Some(&d.to_string()))
                .map(|(k, _)| k.clone())
                .collect(),
            media_type: None,
            size: f.size,
            present: body.is_some(),
            last_pull: time(f.pulled),
            committed: time(f.committed),
            platforms: Vec::new(),
            blobs: Vec::new(),
            signature: None,
        };
        let Some(body) = body else {
            missing += 1;
            manifests.push(detail);
            continue;
        };
        referenced.insert(d.clone());
        let info = ManifestInfo::parse(&body, None).ok();
        detail.media_type = info.as_ref().map(|i| i.media_type.clone());
        let parsed = Parsed::of(&body);
        if detail.media_type.as_deref().is_some_and(is_index) {
            let children: Vec<Digest> = parsed
                .manifests
                .iter()
                .filter_map(|e| Digest::parse(&e.digest).ok())
                .collect();
            let cf = facts_of(storage, children).await?;
            let mut stored_children = Vec::new();
            for e in &parsed.manifests {
                let Ok(cd) = Digest::parse(&e.digest) else {
                    continue;
                };
                let present = cf.get(&cd).is_some_and(|f| f.size.is_some());
                if present {
                    stored_children.push(cd.clone());
                }
                detail.platforms.push(PlatformEntry {
                    platform: e.platform.as_ref().map(|p| p.to_string()),
                    digest: e.digest.clone(),
                    present,
                });
            }
            missing += detail.platforms.iter().filter(|p| !p.present).count();
            // Listed after the index, in its order.
            queue.extend(stored_children.into_iter().rev());
        } else {
            let declared: Vec<(Digest, Option<String>, Option<u64>)> = if parsed.config.is_some() {
                parsed
                    .blobs()
                    .filter_map(|b| {
                        Some((Digest::parse(&b.digest).ok()?, b.media_type.clone(), b.size))
                    })
                    .collect()
            } else {
                info.iter()
                    .flat_map(|i| i.blobs.iter().map(|d| (d.clone(), None, None)))
                    .collect()
            };
            let bf = facts_of(storage, declared.iter().map(|(d, _, _)| d.clone())).await?;
            for (bd, media_type, size) in declared {
                let f = bf.get(&bd).cloned().unwrap_or_default();
                if f.size.is_some() {
                    referenced.insert(bd.clone());
                } else {
                    missing += 1;
                }
                detail.blobs.push(BlobDetail {
                    digest: bd.to_string(),
                    media_type,
                    size,
                    present: f.size.is_some(),
                    stored_size: f.size,
                    last_pull: time(f.pulled),
                    committed: time(f.committed),
                });
            }
        }
        manifests.push(detail);
    }
    let sizes = facts_of(storage, referenced).await?;
    Ok(RepoDetail {
        repository: name.to_string(),
        pulls_recorded,
        tags,
        manifests,
        bytes: sizes.values().filter_map(|f| f.size).sum(),
        missing,
    })
}

impl RepoDetail {
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "repository {}", self.repository);
        if !self.pulls_recorded {
            s += "pulls are not recorded (the config has no expiry section): commit times shown\n";
        }
        for (t, d) in &self.tags {
            let _ = writeln!(
                s,
                "tag {t} -> {}",
                d.as_deref().unwrap_or("(unreadable link)")
            );
        }
        for m in &self.manifests {
            let _ = write!(s, "manifest {}", m.digest);
            if !m.tags.is_empty() {
                let _ = write!(s, " ({})", m.tags.join(", "));
            }
            s += "\n";
            if !m.present {
                s += "  NOT IN STORAGE\n";
                continue;
            }
            let _ = writeln!(
                s,
                "  {}  {} bytes  last pull {}",
                m.media_type.as_deref().unwrap_or("(unparsable)"),
                m.size.unwrap_or(0),
                pull_text(&m.last_pull, &m.committed)
            );
            if let Some(sig) = &m.signature {
                let _ = writeln!(s, "  signature {sig}");
            }
            for p in &m.platforms {
                let _ = writeln!(
                    s,
                    "  platform {}  {}  {}",
                    p.platform.as_deref().unwrap_or("-"),
                    p.digest,
                    if p.present { "present" } else { "MISSING" }
                );
            }
            for b in &m.blobs {
                let size = b.stored_size.or(b.size).unwrap_or(0);
                let state = if b.present {
                    format!(
                        "present, last pull {}",
                        pull_text(&b.last_pull, &b.committed)
                    )
                } else {
                    "MISSING".to_owned()
                };
                let _ = writeln!(s, "  blob {}  {size} bytes  {state}", b.digest);
            }
        }
        let _ = writeln!(
            s,
            "{} manifests, {} stored, {} missing",
            self.manifests.len(),
            human_bytes(self.bytes),
            self.missing
        );
        s
    }
}
