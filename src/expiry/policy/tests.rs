//! The expiry policy against hand-built snapshots, with the clock fixed by the test.

use std::time::{Duration, SystemTime};

use super::*;
use crate::expiry::inventory::{Blob, Repo, TagLinks};

const DAY: u64 = 86_400;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 * DAY)
}

fn d(s: &str) -> Digest {
    Digest::sha256_of(s.as_bytes())
}

/// A snapshot built by hand: blobs with a size and the seconds since their last pull.
#[derive(Default)]
struct Snap(Inventory);

impl Snap {
    fn blob(mut self, name: &str, size: u64, idle_secs: u64) -> Self {
        self.0.blobs.insert(
            d(name),
            Blob {
                size,
                last_access: now() - Duration::from_secs(idle_secs),
            },
        );
        self
    }

    fn manifest(mut self, name: &str, idle_secs: u64, refs: &[&str]) -> Self {
        self = self.blob(name, 1, idle_secs);
        self.0
            .manifests
            .insert(d(name), refs.iter().map(|r| d(r)).collect());
        self
    }

    /// A repository holding `manifests`, with tag `t<manifest>` on each.
    fn repo(mut self, name: &str, manifests: &[&str], layers: &[&str]) -> Self {
        self.0.repos.push(Repo {
            name: name.into(),
            revisions: manifests.iter().map(|m| d(m)).collect(),
            layers: layers.iter().map(|l| d(l)).collect(),
            tags: manifests
                .iter()
                .map(|m| TagLinks {
                    tag: format!("t{m}"),
                    current: Some(d(m)),
                    index: vec![d(m)],
                })
                .collect(),
        });
        self
    }
}

fn policy(max_age_days: Option<u64>, max_size: Option<u64>) -> ExpiryPolicy {
    ExpiryPolicy {
        max_age: max_age_days.map(|n| Duration::from_secs(n * DAY)),
        max_size,
        min_idle: Duration::from_secs(600),
        ..ExpiryPolicy::default()
    }
}

fn removed(p: &Plan) -> Vec<Digest> {
    p.blobs.keys().cloned().collect()
}

fn set(names: &[&str]) -> Vec<Digest> {
    let mut v: Vec<Digest> = names.iter().map(|n| d(n)).collect();
    v.sort();
    v
}

#[test]
fn no_limits_remove_nothing() {
    let inv = Snap::default()
        .manifest("m", 400 * DAY, &["l"])
        .blob("l", 100, 400 * DAY)
        .blob("loose", 5, 400 * DAY)
        .0;
    let p = plan(&inv, &policy(None, None), now());
    assert!(p.is_empty());
    assert_eq!(p.kept_bytes, 106);
}

#[test]
fn an_old_manifest_goes_with_the_blobs_only_it_used() {
    let inv = Snap::default()
        .manifest("old", 40 * DAY, &["base", "app-old"])
        .manifest("new", DAY, &["base", "app-new"])
        .blob("base", 100, 40 * DAY)
        .blob("app-old", 10, 40 * DAY)
        .blob("app-new", 10, 40 * DAY)
        .repo("r", &["old", "new"], &["base", "app-old", "app-new"])
        .0;
    let p = plan(&inv, &policy(Some(30), None), now());
    assert_eq!(removed(&p), set(&["old", "app-old"]));
    assert_eq!(p.manifests, [d("old")].into_iter().collect());
    assert!(p.blobs.values().all(|(_, r)| *r == Reason::Age));
    // The shared base was last pulled 40 days ago, but a kept manifest still references it.
    assert!(!p.blobs.contains_key(&d("base")));
    assert_eq!(p.kept_bytes, 1 + 100 + 10);
}

#[test]
fn a_blob_pulled_recently_outlives_its_manifest() {
    let inv = Snap::default()
        .manifest("m", 40 * DAY, &["l1", "l2"])
        .blob("l1", 10, 40 * DAY)
        .blob("l2", 10, 2 * DAY)
        .0;
    let p = plan(&inv, &policy(Some(30), None), now());
    assert_eq!(removed(&p), set(&["m", "l1"]));
}

#[test]
fn a_kept_index_keeps_its_platform_manifests() {
    let inv = Snap::default()
        .manifest("index", DAY, &["amd64", "arm64"])
        .manifest("amd64", 40 * DAY, &["la"])
        .manifest("arm64", 40 * DAY, &["lb"])
        .blob("la", 10, 40 * DAY)
        .blob("lb", 10, 40 * DAY)
        .0;
    let p = plan(&inv, &policy(Some(30), None), now());
    assert!(p.is_empty(), "{p:?}");

    // Once the index itself is old, all of it goes.
    let mut inv = inv;
    inv.blobs.get_mut(&d("index")).unwrap().last_access = now() - Duration::from_secs(31 * DAY);
    let p = plan(&inv, &policy(Some(30), None), now());
    assert_eq!(removed(&p), set(&["index", "amd64", "arm64", "la", "lb"]));
}

#[test]
fn min_idle_protects_whatever_the_limits() {
    let inv = Snap::default()
        .manifest("m", 60, &["l"])
        .blob("l", 1_000, 60)
        .blob("loose", 1_000, 30)
        .0;
    let p = plan(&inv, &policy(Some(0), Some(0)), now());
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(p.kept_bytes, 2_001);
}

#[test]
fn size_cap_evicts_least_recently_pulled_images_first() {
    // Three images on one shared base; c was pulled last, a first.
    let inv = Snap::default()
        .manifest("a", 3 * DAY, &["base", "la"])
        .manifest("b", 2 * DAY, &["base", "lb"])
        .manifest("c", DAY, &["base", "lc"])
        .blob("base", 50, DAY)
        .blob("la", 100, 3 * DAY)
        .blob("lb", 100, 2 * DAY)
        .blob("lc", 100, DAY)
        .0;
    let total = 3 + 50 + 300;
    // Room for all but one image: a goes, with the layer only it used.
    let p = plan(&inv, &policy(None, Some(total - 2)), now());
    assert_eq!(removed(&p), set(&["a", "la"]));
    assert!(p.blobs.values().all(|(_, r)| *r == Reason::Size));
    assert_eq!(p.kept_bytes, total - 101);
    assert_eq!(p.manifests, [d("a")].into_iter().collect());

    // Room for one image: only c and the base remain.
    let p = plan(&inv, &policy(None, Some(160)), now());
    assert_eq!(removed(&p), set(&["a", "la", "b", "lb"]));
    assert_eq!(p.kept_bytes, 1 + 50 + 100);
}

#[test]
fn size_cap_frees_shared_blobs_by_their_own_last_pull() {
    // Evicting the old manifest frees a layer pulled more recently than a loose blob: the
    // loose blob goes first.
    let inv = Snap::default()
        .manifest("m", 5 * DAY, &["l"])
        .blob("l", 100, DAY)
        .blob("loose", 100, 3 * DAY)
        .0;
    let p = plan(&inv, &policy(None, Some(101)), now());
    assert_eq!(removed(&p), set(&["m", "loose"]));
    assert_eq!(p.kept_bytes, 100);
    assert!(p.manifests.contains(&d("m")));
}

#[test]
fn size_cap_and_age_together() {
    let inv = Snap::default()
        .manifest("old", 40 * DAY, &["lo"])
        .manifest("mid", 5 * DAY, &["lm"])
        .manifest("new", DAY, &["ln"])
        .blob("lo", 100, 40 * DAY)
        .blob("lm", 100, 5 * DAY)
        .blob("ln", 100, DAY)
        .0;
    let p = plan(&inv, &policy(Some(30), Some(150)), now());
    assert_eq!(p.blobs[&d("old")].1, Reason::Age);
    assert_eq!(p.blobs[&d("lm")].1, Reason::Size);
    assert_eq!(removed(&p), set(&["old", "lo", "mid", "lm"]));
    assert_eq!(p.kept_bytes, 101);
}

#[test]
fn sparing_a_manifest_keeps_what_it_references() {
    let inv = Snap::default()
        .manifest("index", 40 * DAY, &["child"])
        .manifest("child", 40 * DAY, &["l"])
        .blob("l", 10, 40 * DAY)
        .blob("loose", 10, 40 * DAY)
        .0;
    let mut p = plan(&inv, &policy(Some(30), None), now());
    assert_eq!(removed(&p), set(&["index", "child", "l", "loose"]));
    p.spare(&d("index"), &inv);
    assert_eq!(removed(&p), set(&["loose"]));
    assert!(p.manifests.is_empty());
    assert_eq!(p.kept_bytes, 12);
}

#[test]
fn links_of_removed_content_go_tags_first() {
    let inv = Snap::default()
        .manifest("old", 40 * DAY, &["l"])
        .manifest("new", DAY, &["l2"])
        .blob("l", 10, 40 * DAY)
        .blob("l2", 10, DAY)
        .repo("library/alpine", &["old", "new"], &["l", "l2"])
        .0;
    let p = plan(&inv, &policy(Some(30), None), now());
    let (before, after) = p.links(&inv);
    let repo = "docker/registry/v2/repositories/library/alpine";
    let old = d("old");
    assert_eq!(
        before,
        vec![
            format!("{repo}/_manifests/tags/t{}/current/link", "old"),
            format!(
                "{repo}/_manifests/tags/told/index/sha256/{}/link",
                old.hex()
            ),
            format!("{repo}/_manifests/revisions/sha256/{}/link", old.hex()),
        ]
    );
    assert_eq!(
        after,
        vec![format!("{repo}/_layers/sha256/{}/link", d("l").hex())]
    );
}

#[test]
fn a_tag_that_moved_keeps_its_current_link() {
    let mut inv = Snap::default()
        .manifest("old", 40 * DAY, &[])
        .manifest("new", DAY, &[])
        .repo("r", &["old", "new"], &[])
        .0;
    // One tag that pointed at old and now points at new.
    inv.repos[0].tags = vec![TagLinks {
        tag: "latest".into(),
        current: Some(d("new")),
        index: vec![d("old"), d("new")],
    }];
    let p = plan(&inv, &policy(Some(30), None), now());
    let (before, _) = p.links(&inv);
    assert_eq!(
        before,
        vec![
            format!(
                "docker/registry/v2/repositories/r/_manifests/tags/latest/index/sha256/{}/link",
                d("old").hex()
            ),
            format!(
                "docker/registry/v2/repositories/r/_manifests/revisions/sha256/{}/link",
                d("old").hex()
            ),
        ]
    );
}
