//! Tag lists and the catalog, paginated the way Distribution does. A tag list comes from the
//! upstream (sorted and paged here whatever the upstream did), or from storage when it fails;
//! the catalog lists what storage holds.

use super::{CatalogPage, Registry, RegistryError, TagList, TagsPage};
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
        let mut refused = None;
        if !self.settings.offline {
            match self.upstream.tags(&repo, n, last).await {
                Ok(resp) => {
                    let list: TagList = serde_json::from_slice(&resp.body).map_err(|e| {
                        RegistryError::Upstream(UpstreamError::Invalid(format!("tag list: {e}")))
                    })?;
                    let upstream_next = resp
                        .next
                        .and_then(|l| l.split_once('?').map(|(_, q)| q.to_owned()));
                    // Upstreams differ (Distribution 2.8 ignores `n` and does not sort): answer
                    // as the spec says whatever they did — sorted, after `last`, at most `n`.
                    let mut all = list.tags;
                    all.sort();
                    all.dedup();
                    let (tags, local_next) = paginate(all, n, last);
                    return Ok(TagsPage {
                        list: TagList {
                            name: name.to_string(),
                            tags,
                        },
                        next: local_next.or(upstream_next),
                    });
                }
                Err(UpstreamError::NotFound) => return Err(RegistryError::NameUnknown),
                // Outside the allow-list: what is cached may still be listed, nothing else.
                Err(UpstreamError::NotAllowed) => refused = Some(UpstreamError::NotAllowed),
                Err(e) => {
                    tracing::warn!(name = %repo, error = %e, "upstream tag list failed; answering from cache");
                    metrics::counter!(crate::metrics::STALE_SERVED).increment(1);
                }
            }
        }
        let all = self.storage.list(&layout::tags_dir(&repo)).await?;
        if all.is_empty() {
            return Err(refused.map_or(RegistryError::NameUnknown, RegistryError::Upstream));
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
