//! The one gate every `/v2` request passes: the access an endpoint needs is computed from the
//! endpoint alone, and a bearer token must grant it. Missing or invalid tokens get 401 with a
//! challenge naming the exact scope; a valid token without the access gets 403 `DENIED`.

use std::net::SocketAddr;

use axum::http::{HeaderMap, header};

use super::endpoint::Endpoint;
use crate::auth::realip::{Origin, Reached, RealIp};
use crate::auth::token::TokenVerifier;
use crate::auth::{RepositoryNames, ResourceActions};
use crate::error::{ApiError, Code};

pub struct Gate {
    pub verifier: TokenVerifier,
    /// Token endpoint URL for challenges; `None`: derived from where the request was sent (its
    /// host and scheme, see [`RealIp::origin`]) and `path`.
    pub realm: Option<String>,
    pub path: String,
    /// The proxies (`auth.trusted_proxies`) whose `X-Forwarded-Host` and `X-Forwarded-Proto`
    /// say where the client addressed the request, for the realm when `realm` is `None`.
    pub proxies: RealIp,
    pub service: String,
    /// How the mirror names repositories: a token granting a repository under any of its names
    /// grants it (the token service decided on the name the mirror serves). `None`: names
    /// compare as written.
    pub names: Option<RepositoryNames>,
}

/// The access `ep` requires; `None` for the base endpoint, which needs only a valid token.
pub fn required_access(ep: &Endpoint) -> Option<ResourceActions> {
    let repo = |name: &str| ResourceActions {
        kind: "repository".into(),
        name: name.to_owned(),
        actions: vec!["pull".into()],
    };
    match ep {
        Endpoint::Base | Endpoint::Upload => None,
        Endpoint::Catalog => Some(ResourceActions {
            kind: "registry".into(),
            name: "catalog".into(),
            actions: vec!["*".into()],
        }),
        Endpoint::Tags(n)
        | Endpoint::Manifest(n, _)
        | Endpoint::Blob(n, _)
        | Endpoint::Referrers(n, _) => Some(repo(n.as_str())),
    }
}

/// True when `granted` (a token's access claim) covers every action of `need`, repositories
/// compared by the name the mirror serves them under (`served`).
pub fn covers(
    granted: &[ResourceActions],
    need: &ResourceActions,
    served: &dyn Fn(&str) -> String,
) -> bool {
    let repository = need.kind == "repository";
    let need_name = if repository {
        served(&need.name)
    } else {
        need.name.clone()
    };
    need.actions.iter().all(|action| {
        granted.iter().any(|g| {
            g.kind == need.kind
                && (g.name == need.name || repository && served(&g.name) == need_name)
                && g.actions.iter().any(|a| a == action || a == "*")
        })
    })
}

impl Gate {
    /// `auth.realm`, or this server's token endpoint where the client addressed the request
    /// (see [`Origin`]: the forwarded host and scheme only from trusted proxies).
    fn realm(&self, origin: Origin<'_>) -> String {
        if let Some(r) = &self.realm {
            return r.clone();
        }
        let scheme = if origin.https { "https" } else { "http" };
        let host = origin.host.unwrap_or("localhost");
        format!("{scheme}://{host}{}", self.path)
    }

    fn challenge(
        &self,
        origin: Origin<'_>,
        need: Option<&ResourceActions>,
        error: Option<&str>,
    ) -> String {
        let mut c = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            self.realm(origin),
            self.service
        );
        if let Some(n) = need {
            c.push_str(&format!(",scope=\"{}\"", n.to_scope()));
        }
        if let Some(e) = error {
            c.push_str(&format!(",error=\"{e}\""));
        }
        c
    }

    fn served(&self, name: &str) -> String {
        self.names
            .as_ref()
            .and_then(|f| f(name).into_iter().next())
            .unwrap_or_else(|| name.to_owned())
    }

    /// Check the request's token for `ep` (the request from `peer`, which `reached` the mirror
    /// as it says); returns the account it names. A challenge names the token endpoint where
    /// the client addressed the request, unless `auth.realm` is set.
    pub fn check(
        &self,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
        reached: Reached<'_>,
        ep: &Endpoint,
    ) -> Result<String, ApiError> {
        let origin = || self.proxies.origin(headers, reached, peer);
        let need = required_access(ep);
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
        let Some(token) = token else {
            return Err(ApiError::new(Code::Unauthorized, "authentication required")
                .with_challenge(self.challenge(origin(), need.as_ref(), None)));
        };
        let claims = self.verifier.verify(token).map_err(|e| {
            metrics::counter!(crate::metrics::AUTH_TOKEN_REJECTED).increment(1);
            tracing::info!(error = %e, "bearer token refused");
            ApiError::new(Code::Unauthorized, format!("invalid token: {e}"))
                .with_challenge(self.challenge(origin(), need.as_ref(), Some("invalid_token")))
        })?;
        match need {
            Some(n) if !covers(&claims.access, &n, &|name| self.served(name)) => {
                Err(ApiError::new(
                    Code::Denied,
                    format!("the token does not grant {}", n.to_scope()),
                ))
            }
            _ => Ok(claims.sub),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_written(n: &str) -> String {
        n.to_owned()
    }

    fn ra(kind: &str, name: &str, actions: &[&str]) -> ResourceActions {
        ResourceActions {
            kind: kind.into(),
            name: name.into(),
            actions: actions.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn coverage() {
        let need = ra("repository", "myorg/app", &["pull"]);
        assert!(covers(
            &[ra("repository", "myorg/app", &["pull"])],
            &need,
            &as_written
        ));
        assert!(covers(
            &[ra("repository", "myorg/app", &["*"])],
            &need,
            &as_written
        ));
        assert!(!covers(
            &[ra("repository", "myorg/app", &["push"])],
            &need,
            &as_written
        ));
        assert!(!covers(
            &[ra("repository", "myorg/other", &["pull"])],
            &need,
            &as_written
        ));
        assert!(!covers(
            &[ra("registry", "myorg/app", &["pull"])],
            &need,
            &as_written
        ));
        assert!(!covers(&[], &need, &as_written));
    }

    /// Issue 18: the token service decides on the name the mirror serves, so a grant under
    /// either name of a repository covers it, and never another repository.
    #[test]
    fn repositories_compare_by_the_name_the_mirror_serves() {
        let served = |n: &str| {
            if n.contains('/') {
                n.to_owned()
            } else {
                format!("library/{n}")
            }
        };
        let short = ra("repository", "small", &["pull"]);
        let long = ra("repository", "library/small", &["pull"]);
        assert!(covers(std::slice::from_ref(&long), &short, &served));
        assert!(covers(std::slice::from_ref(&short), &long, &served));
        assert!(!covers(std::slice::from_ref(&short), &long, &as_written));
        assert!(!covers(
            &[ra("repository", "other", &["pull"])],
            &long,
            &served
        ));
        let catalog = ra("registry", "catalog", &["*"]);
        assert!(!covers(
            &[ra("registry", "library/catalog", &["*"])],
            &catalog,
            &served
        ));
    }
}
