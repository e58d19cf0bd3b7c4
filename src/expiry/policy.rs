//! The expiry decision, as a pure function of a storage snapshot, the policy and the time, so
//! that it is tested with any clock.
//!
//! Manifests are what clients ask for; blobs live as long as a kept manifest references them.
//! 1. Anything pulled within `min_idle` stays, whatever else holds.
//! 2. Age: a manifest not pulled for `max_age` goes, unless a kept index lists it. A blob goes
//!    when no kept manifest references it and it was itself not pulled for `max_age`.
//! 3. Size: while the kept bytes exceed `max_size`, the least recently pulled unit goes: a
//!    manifest that no kept index lists (with the blobs only it referenced, which then compete
//!    by their own last pull), or a blob no kept manifest references.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::time::{Duration, SystemTime};

use crate::layout;
use crate::oci::Digest;

use super::ExpiryPolicy;
use super::inventory::Inventory;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not pulled for `max_age`.
    Age,
    /// Least recently pulled while the cache was over `max_size`.
    Size,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Blob data to delete (manifests included), with its size and why.
    pub blobs: BTreeMap<Digest, (u64, Reason)>,
    /// The manifests among them: their repositories' revision and tag links go too.
    pub manifests: BTreeSet<Digest>,
    /// Bytes stored after the plan is carried out.
    pub kept_bytes: u64,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.blobs.values().map(|(s, _)| s).sum()
    }

    /// Keep `d` after all (it was pulled again), and everything it references. Returns how
    /// many digests that took off the plan.
    pub fn spare(&mut self, d: &Digest, inv: &Inventory) -> usize {
        let mut stack = vec![d.clone()];
        let mut n = 0;
        while let Some(d) = stack.pop() {
            if let Some((size, _)) = self.blobs.remove(&d) {
                self.kept_bytes += size;
                n += 1;
            }
            if self.manifests.remove(&d)
                && let Some(refs) = inv.manifests.get(&d)
            {
                stack.extend(refs.iter().cloned());
            }
        }
        n
    }

    /// Link keys to delete, in the order that keeps every step consistent for readers: tags
    /// first (nothing resolves to a manifest about to go), then revisions, then layers.
    pub fn links(&self, inv: &Inventory) -> (Vec<String>, Vec<String>) {
        let mut before_data = Vec::new();
        let mut after_data = Vec::new();
        for r in &inv.repos {
            let repo = format!("{}/{}", layout::REPOSITORIES, r.name);
            for t in &r.tags {
                let tag_dir = format!("{repo}/_manifests/tags/{}", t.tag);
                let whole_tag = t
                    .current
                    .as_ref()
                    .is_some_and(|c| self.manifests.contains(c));
                if whole_tag {
                    before_data.push(format!("{tag_dir}/current/link"));
                }
                for d in &t.index {
                    if whole_tag || self.manifests.contains(d) {
                        before_data.push(format!("{tag_dir}/index/{}/{}/link", alg(d), d.hex()));
                    }
                }
            }
            for d in r.revisions.iter().filter(|d| self.manifests.contains(*d)) {
                before_data.push(format!(
                    "{repo}/_manifests/revisions/{}/{}/link",
                    alg(d),
                    d.hex()
                ));
            }
            for d in r.layers.iter().filter(|d| self.blobs.contains_key(*d)) {
                after_data.push(format!("{repo}/_layers/{}/{}/link", alg(d), d.hex()));
            }
        }
        (before_data, after_data)
    }
}

fn alg(d: &Digest) -> &'static str {
    d.algorithm().as_str()
}

pub fn plan(inv: &Inventory, policy: &ExpiryPolicy, now: SystemTime) -> Plan {
    let idle = |d: &Digest| -> Duration {
        inv.blobs
            .get(d)
            .and_then(|b| now.duration_since(b.last_access).ok())
            .unwrap_or(Duration::ZERO)
    };
    let protected = |d: &Digest| idle(d) < policy.min_idle;
    let aged = |d: &Digest| !protected(d) && policy.max_age.is_some_and(|a| idle(d) >= a);

    // Age: which manifests stay, then everything they reach.
    let mut kept: BTreeSet<Digest> = inv.manifests.keys().filter(|m| !aged(m)).cloned().collect();
    let mut stack: Vec<Digest> = kept.iter().cloned().collect();
    while let Some(m) = stack.pop() {
        for r in &inv.manifests[&m] {
            if inv.manifests.contains_key(r) && kept.insert(r.clone()) {
                stack.push(r.clone());
            }
        }
    }
    let mut refcount: HashMap<&Digest, usize> = HashMap::new();
    for m in &kept {
        for r in &inv.manifests[m] {
            *refcount.entry(r).or_default() += 1;
        }
    }
    let referenced = |d: &Digest, rc: &HashMap<&Digest, usize>| {
        kept.contains(d) || rc.get(d).is_some_and(|n| *n > 0)
    };

    let mut out = Plan::default();
    for (d, b) in &inv.blobs {
        if !referenced(d, &refcount) && aged(d) {
            out.blobs.insert(d.clone(), (b.size, Reason::Age));
        }
    }
    for m in inv.manifests.keys() {
        if out.blobs.contains_key(m) {
            out.manifests.insert(m.clone());
        }
    }
    let mut total: u64 = inv
        .blobs
        .iter()
        .filter(|(d, _)| !out.blobs.contains_key(*d))
        .map(|(_, b)| b.size)
        .sum();

    if let Some(max) = policy.max_size
        && total > max
    {
        // Units compete by last pull, oldest first (then by digest, for a stable order).
        let key = |d: &Digest| (Reverse(inv.blobs.get(d).map(|b| b.last_access)), d.clone());
        let mut heap: BinaryHeap<(Reverse<Option<SystemTime>>, Digest)> = BinaryHeap::new();
        for m in &kept {
            if refcount.get(m).is_none_or(|n| *n == 0) && inv.blobs.contains_key(m) {
                heap.push(key(m));
            }
        }
        for d in inv.blobs.keys() {
            if !referenced(d, &refcount) && !out.blobs.contains_key(d) {
                heap.push(key(d));
            }
        }
        let mut evicted: Vec<Digest> = Vec::new();
        while total > max {
            let Some((_, d)) = heap.pop() else { break };
            if protected(&d) {
                // Every unit left was pulled at least as recently.
                break;
            }
            if kept.remove(&d) {
                for r in &inv.manifests[&d] {
                    let n = refcount.get_mut(r).expect("counted");
                    *n -= 1;
                    if *n == 0 && inv.blobs.contains_key(r) && !out.blobs.contains_key(r) {
                        heap.push(key(r));
                    }
                }
            }
            if let Some(b) = inv.blobs.get(&d) {
                total -= b.size;
                out.blobs.insert(d.clone(), (b.size, Reason::Size));
                evicted.push(d);
            }
        }
        for d in evicted {
            if inv.manifests.contains_key(&d) {
                out.manifests.insert(d);
            }
        }
    }
    out.kept_bytes = total;
    out
}

#[cfg(test)]
mod tests;
