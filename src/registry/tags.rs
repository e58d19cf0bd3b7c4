//! Tag lists and the catalog, paginated the way Distribution does. A tag list comes from the
//! upstream (sorted and paged here whatever the upstream did), or from storage when it fails;
//! the catalog lists what storage holds. The upstream's list is paged while it is parsed: only
//! the tags the page needs are kept, so `n=1` against a list of millions holds one tag, not all.
//! Identical reads of a list in flight at once share one upstream request.
//!
//! While storage cannot be read, a tag list is what the upstream lists (counted as served
//! degraded); with the upstream failing too, or offline, it is a 503 naming both. The catalog
//! is not passed through: it lists what this mirror holds, which only storage knows (the
//! upstream's catalog is another registry's content), so it is a 503 until storage is back.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{
    CatalogPage, OFFLINE, Registry, RegistryError, TagList, TagsPage, answered_while_down,
    upstream_failed_too,
};
use crate::layout;
use crate::oci::RepoName;
use crate::upstream::UpstreamError;

impl Registry {
    pub async fn tags(
        &self,
        name: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<TagsPage, RegistryError> {
        let repo = self.upstream.canonical_name(name);
        // Why the upstream's list is not the answer (offline: None).
        let mut failed = None;
        if !self.settings.offline {
            let up = self.upstream.clone();
            let key = (repo.clone(), n, last.map(str::to_owned));
            let (repo2, last2) = (repo.clone(), key.2.clone());
            let shared = || {
                metrics::counter!(crate::metrics::UPSTREAM_SHARED, "op" => "tags").increment(1);
            };
            let (listed, _) = self
                .tag_lists
                .run_noting(
                    key,
                    async move { up.tags(&repo2, n, last2.as_deref()).await },
                    shared,
                )
                .await;
            match listed {
                Ok(resp) => {
                    let kept = parse_page(&resp.body, n, last).map_err(|e| {
                        RegistryError::Upstream(UpstreamError::Invalid(format!("tag list: {e}")))
                    })?;
                    let upstream_next = resp
                        .next
                        .and_then(|l| l.split_once('?').map(|(_, q)| q.to_owned()));
                    // Upstreams differ (Distribution 2.8 ignores `n` and does not sort): answer
                    // as the spec says whatever they did — sorted, after `last`, at most `n`.
                    let (tags, local_next) = paginate(kept.into_iter().collect(), n, last);
                    let page = TagsPage {
                        list: TagList {
                            name: name.to_string(),
                            tags,
                        },
                        next: local_next.or(upstream_next),
                    };
                    // The list never touches storage; while it cannot be read, what the
                    // upstream listed is all a client can get, and is counted as such.
                    if self.storage.reads_refused() {
                        return answered_while_down("tags", Ok(page));
                    }
                    return Ok(page);
                }
                Err(UpstreamError::NotFound) => return Err(RegistryError::NameUnknown),
                // Outside the allow-list: what is cached may still be listed, nothing else.
                Err(UpstreamError::NotAllowed) => failed = Some(UpstreamError::NotAllowed),
                Err(e) => {
                    tracing::warn!(name = %repo, error = %e, "upstream tag list failed; answering from cache");
                    failed = Some(e);
                }
            }
        }
        let all = match self.storage.list(&layout::tags_dir(&repo)).await {
            Ok(all) => all,
            Err(e) if e.is_outage() => return Err(unlistable(failed)),
            Err(e) => return Err(e.into()),
        };
        if all.is_empty() {
            return Err(match failed {
                Some(UpstreamError::NotAllowed) => {
                    RegistryError::Upstream(UpstreamError::NotAllowed)
                }
                _ => RegistryError::NameUnknown,
            });
        }
        if failed
            .as_ref()
            .is_some_and(|e| *e != UpstreamError::NotAllowed)
        {
            metrics::counter!(crate::metrics::STALE_SERVED).increment(1);
        }
        let (tags, next) = paginate(all, n, last);
        Ok(TagsPage {
            list: TagList {
                name: name.to_string(),
                tags,
            },
            next,
        })
    }

    /// The repositories storage holds; 503 while it cannot be read (see the module comment).
    pub async fn catalog(
        &self,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<CatalogPage, RegistryError> {
        let repos = layout::repositories(self.storage.as_ref()).await?;
        let (repositories, next) = paginate(repos, n, last);
        Ok(CatalogPage { repositories, next })
    }
}

/// Why a tag list cannot be answered when storage cannot be listed either: `failed` is why the
/// upstream's list was not the answer (None: the mirror is offline).
fn unlistable(failed: Option<UpstreamError>) -> RegistryError {
    match failed {
        None => RegistryError::StorageAndUpstreamDown(OFFLINE.into()),
        Some(UpstreamError::NotAllowed) => RegistryError::StorageAndUpstreamDown(
            "the repository is outside the upstream allow-list (only cached tags are listed)"
                .into(),
        ),
        Some(e) => upstream_failed_too(RegistryError::Upstream(e)),
    }
}

/// The tags of an upstream tag list (`{"name": …, "tags": [...]}`) that a page of `n` after
/// `last` can show, sorted and without duplicates: those after `last`, and of them the `n + 1`
/// first (one more than the page, to know whether a next page exists). Without `n`, all of them.
fn parse_page(
    body: &[u8],
    n: Option<usize>,
    last: Option<&str>,
) -> Result<BTreeSet<String>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let kept = PageSeed {
        keep: n.map(|n| n.saturating_add(1)),
        last,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(kept)
}

#[derive(Clone, Copy)]
struct PageSeed<'a> {
    keep: Option<usize>,
    last: Option<&'a str>,
}

impl<'de> DeserializeSeed<'de> for PageSeed<'_> {
    type Value = BTreeSet<String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PageSeed<'_> {
    type Value = BTreeSet<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a tag list object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kept = BTreeSet::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "tags" {
                kept = map.next_value_seed(TagsSeed(self))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(kept)
    }
}

/// The `tags` array (or `null`, as some registries send for none).
struct TagsSeed<'a>(PageSeed<'a>);

impl<'de> DeserializeSeed<'de> for TagsSeed<'_> {
    type Value = BTreeSet<String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for TagsSeed<'_> {
    type Value = BTreeSet<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of tags")
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(BTreeSet::new())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(BTreeSet::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let PageSeed { keep, last } = self.0;
        let mut kept = BTreeSet::new();
        while let Some(tag) = seq.next_element::<std::borrow::Cow<'de, str>>()? {
            if last.is_some_and(|l| tag.as_ref() <= l) {
                continue;
            }
            if let Some(k) = keep
                && kept.len() >= k
            {
                // Full: only a tag sorting before the greatest kept one gets in.
                if kept
                    .last()
                    .is_some_and(|g: &String| tag.as_ref() >= g.as_str())
                {
                    continue;
                }
                if kept.insert(tag.into_owned()) {
                    kept.pop_last();
                }
                continue;
            }
            kept.insert(tag.into_owned());
        }
        Ok(kept)
    }
}

/// Page through a sorted list the way Distribution does: entries after `last`, at most `n`,
/// with the next page's query when more remain.
fn paginate(
    all: Vec<String>,
    n: Option<usize>,
    last: Option<&str>,
) -> (Vec<String>, Option<String>) {
    let rest: Vec<String> = match last {
        Some(l) => all.into_iter().filter(|t| t.as_str() > l).collect(),
        None => all,
    };
    match n {
        Some(n) if rest.len() > n => {
            let page: Vec<String> = rest.into_iter().take(n).collect();
            let next = page.last().map(|l| {
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("n", &n.to_string())
                    .append_pair("last", l)
                    .finish()
            });
            (page, next)
        }
        _ => (rest, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_list_is_paged_while_parsed() {
        let body = br#"{"name":"x","tags":["d","a","c","b","a","e"],"extra":{"k":[1]}}"#;
        let got =
            |n, last| -> Vec<String> { parse_page(body, n, last).unwrap().into_iter().collect() };
        assert_eq!(got(None, None), ["a", "b", "c", "d", "e"]);
        assert_eq!(got(Some(1), None), ["a", "b"], "one more than the page");
        assert_eq!(got(Some(2), Some("b")), ["c", "d", "e"]);
        assert_eq!(got(Some(0), None), ["a"]);
        assert!(got(Some(5), Some("e")).is_empty());
        assert!(
            parse_page(br#"{"name":"x","tags":null}"#, None, None)
                .unwrap()
                .is_empty()
        );
        assert!(
            parse_page(br#"{"name":"x"}"#, Some(3), None)
                .unwrap()
                .is_empty()
        );
        assert!(parse_page(br#"{"tags":[1]}"#, None, None).is_err());
        assert!(parse_page(br#"{"tags":[]} trailing"#, None, None).is_err());
        assert!(parse_page(b"[]", None, None).is_err());
        // A page of the list as the whole list would have given it.
        let all: Vec<String> = (0..500).rev().map(|i| format!("t{i:04}")).collect();
        let body = serde_json::to_vec(&serde_json::json!({"name": "x", "tags": all})).unwrap();
        let kept = parse_page(&body, Some(10), Some("t0100")).unwrap();
        let (page, next) = paginate(kept.into_iter().collect(), Some(10), Some("t0100"));
        assert_eq!(page.first().map(String::as_str), Some("t0101"));
        assert_eq!(page.len(), 10);
        assert_eq!(next.as_deref(), Some("n=10&last=t0110"));
    }

    #[test]
    fn pagination() {
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let (p, next) = paginate(all.clone(), Some(2), None);
        assert_eq!(p, vec!["a", "b"]);
        assert_eq!(next.as_deref(), Some("n=2&last=b"));
        let (p, next) = paginate(all.clone(), Some(2), Some("b"));
        assert_eq!(p, vec!["c", "d"]);
        assert_eq!(next, None);
        let (p, _) = paginate(all, None, Some("c"));
        assert_eq!(p, vec!["d"]);
    }
}
