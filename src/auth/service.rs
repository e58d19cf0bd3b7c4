//! The token service: the Docker token protocol's logic, independent of HTTP. Authenticate the
//! client (password, refresh token or anonymous), authorize each requested scope against the
//! ACL (granted = requested ∩ allowed), and sign a token carrying what was granted.

use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use super::acl::{Acl, Decision};
use super::authn::{AuthnError, Chain, Login, Recheck};
use super::external::ExternalAuthorizer;
use super::token::{IssuedToken, RefreshGrant, TokenError, TokenIssuer, TokenVerifier};
use super::{Identity, RepositoryNames, RequestInfo, ResourceActions};

/// What can change at run time (reloaded from the config file): who the users are and what
/// they may do.
pub struct Policy {
    pub authn: Chain,
    pub acl: Acl,
    /// Consulted for a scope no ACL rule matches (where docker_auth consults it).
    pub ext_authz: Option<Arc<ExternalAuthorizer>>,
}

pub struct TokenService {
    pub service: String,
    issuer: TokenIssuer,
    refresh: Option<RefreshTokens>,
    policy: RwLock<Arc<Policy>>,
    /// The published key set (`<path>/jwks.json`).
    jwks: serde_json::Value,
    /// How the mirror names repositories; unset: as the client wrote them.
    names: OnceLock<RepositoryNames>,
}

/// Refresh tokens are tokens signed with the service's own key for a distinct audience, so a
/// refresh token is never accepted by a registry as an access token, and any replica holding
/// the key can redeem one.
pub struct RefreshTokens {
    pub issuer: TokenIssuer,
    pub verifier: TokenVerifier,
    pub audience: String,
}

pub enum Credentials {
    None,
    Password { username: String, password: String },
    RefreshToken(String),
}

pub struct TokenRequest {
    pub service: Option<String>,
    pub scopes: Vec<String>,
    pub credentials: Credentials,
    pub client: RequestInfo,
    /// `offline_token=true` / `access_type=offline`: also issue a refresh token.
    pub want_refresh: bool,
}

pub struct TokenResponse {
    pub access: IssuedToken,
    pub refresh_token: Option<String>,
    pub granted: Vec<ResourceActions>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenServiceError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("too many failed logins from this address; retry in {}s", .0.as_secs())]
    Throttled(Duration),
    #[error("authentication backend unavailable: {0}")]
    Unavailable(String),
    #[error("too many logins are being checked; retry shortly")]
    Busy,
    #[error("cannot issue token: {0}")]
    Internal(String),
}

impl TokenService {
    pub fn new(
        service: String,
        issuer: TokenIssuer,
        refresh: Option<RefreshTokens>,
        policy: Policy,
    ) -> Self {
        TokenService {
            service,
            jwks: issuer.jwks(&[]),
            issuer,
            refresh,
            policy: RwLock::new(Arc::new(policy)),
            names: OnceLock::new(),
        }
    }

    /// Decide on repositories by the names the mirror serves them under (set once, at
    /// assembly). The token's `access` claim still names what the client asked for.
    pub fn set_repository_names(&self, names: RepositoryNames) {
        let _ = self.names.set(names);
    }

    /// The actions of `r` the ACL grants `identity`, a repository decided on every name it
    /// goes by.
    fn authorize(
        &self,
        policy: &Policy,
        identity: &Identity,
        client: &RequestInfo,
        r: &ResourceActions,
    ) -> Decision {
        match self.names.get() {
            Some(names) if r.kind == "repository" => {
                policy.acl.evaluate_as(identity, client, r, &names(&r.name))
            }
            _ => policy.acl.evaluate(identity, client, r),
        }
    }

    /// Publish this key set instead of the signing key alone (a rotation lists earlier keys).
    pub fn with_jwks(mut self, jwks: serde_json::Value) -> Self {
        self.jwks = jwks;
        self
    }

    /// The JWKS document of the keys whose tokens are valid.
    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    /// Swap in a new policy; requests in flight finish with the old one.
    pub fn replace_policy(&self, policy: Policy) {
        *self.policy.write().expect("lock") = Arc::new(policy);
    }

    fn policy(&self) -> Arc<Policy> {
        self.policy.read().expect("lock").clone()
    }

    pub async fn handle(&self, req: TokenRequest) -> Result<TokenResponse, TokenServiceError> {
        if let Some(s) = &req.service
            && s != &self.service
        {
            return Err(TokenServiceError::BadRequest(format!(
                "unknown service {s:?}; this token service issues tokens for {:?}",
                self.service
            )));
        }
        let mut requested = Vec::new();
        for s in req
            .scopes
            .iter()
            .flat_map(|s| s.split(' '))
            .filter(|s| !s.is_empty())
        {
            requested.push(
                ResourceActions::parse_scope(s)
                    .map_err(|e| TokenServiceError::BadRequest(e.to_string()))?,
            );
        }
        let policy = self.policy();
        let login = match req.credentials {
            Credentials::None => policy.authn.login(req.client.ip, None).await,
            Credentials::Password { username, password } => {
                policy
                    .authn
                    .login(req.client.ip, Some((&username, &password)))
                    .await
            }
            Credentials::RefreshToken(t) => self.redeem(&policy, &t).await,
        }
        .map_err(|e| match e {
            AuthnError::Throttled { retry_after } => TokenServiceError::Throttled(retry_after),
            AuthnError::Unavailable(m) => TokenServiceError::Unavailable(m),
            AuthnError::Busy => TokenServiceError::Busy,
            other => TokenServiceError::Unauthorized(other.to_string()),
        })?;
        let identity = &login.identity;
        let mut granted = Vec::new();
        for r in &requested {
            let decision = self.authorize(&policy, identity, &req.client, r);
            let actions = match (&policy.ext_authz, decision.rule) {
                (Some(z), None) => z.authorize(identity, &req.client, r).await,
                _ => decision.granted,
            };
            metrics::counter!(
                crate::metrics::AUTH_SCOPES,
                "result" => if actions.is_empty() { "denied" } else { "granted" }
            )
            .increment(1);
            if !actions.is_empty() {
                granted.push(ResourceActions {
                    kind: r.kind.clone(),
                    name: r.name.clone(),
                    actions,
                });
            }
        }
        let access = self
            .issuer
            .issue(&identity.account, &self.service, granted.clone())
            .map_err(|e| TokenServiceError::Internal(e.to_string()))?;
        let refresh_token = match (&self.refresh, login.authenticator, req.want_refresh) {
            (Some(r), Some(by), true) if !identity.is_anonymous() => {
                let grant = RefreshGrant {
                    labels: identity.labels.clone(),
                    authn: by.to_owned(),
                    not_after: identity.valid_until,
                };
                match r.issuer.issue_refresh_at(
                    &identity.account,
                    &r.audience,
                    &grant,
                    SystemTime::now(),
                ) {
                    Ok(t) => Some(t.token),
                    // The chain's (or the credential's) end has come: no further refresh.
                    Err(TokenError::Expired { .. }) => None,
                    Err(e) => return Err(TokenServiceError::Internal(e.to_string())),
                }
            }
            _ => None,
        };
        tracing::info!(account = %identity.account, ip = %req.client.ip, requested = requested.len(), granted = granted.len(), "token issued");
        Ok(TokenResponse {
            access,
            refresh_token,
            granted,
        })
    }

    /// The login a refresh token stands for, re-checked: the authenticator that let the account
    /// in is asked whether it still exists (and with which labels); one that cannot look
    /// accounts up leaves the labels of the login. The identity is valid until the presented
    /// token expires, so a refresh token issued now ends with it.
    async fn redeem(&self, policy: &Policy, token: &str) -> Result<Login, AuthnError> {
        let r = self.refresh.as_ref().ok_or(AuthnError::WrongPassword)?;
        let claims = r.verifier.verify(token).map_err(|e| {
            tracing::info!(error = %e, "refresh token refused");
            AuthnError::WrongPassword
        })?;
        if claims.sub.is_empty() {
            return Err(AuthnError::WrongPassword);
        }
        let Some(by) = claims.authn else {
            tracing::info!(account = %claims.sub, "refresh token refused: it names no authenticator (issued before refresh tokens were re-checked); log in again");
            return Err(AuthnError::WrongPassword);
        };
        let labels = match policy.authn.recheck(&by, &claims.sub).await? {
            Recheck::Exists(labels) => labels,
            Recheck::CannotTell => claims.labels.unwrap_or_default(),
            Recheck::Gone => {
                tracing::info!(account = %claims.sub, authenticator = %by, "refresh token refused: the account no longer exists");
                return Err(AuthnError::UnknownUser);
            }
        };
        let authenticator = policy.authn.authenticator_name(&by);
        Ok(Login {
            identity: Identity {
                account: claims.sub,
                labels,
                valid_until: Some(claims.exp),
            },
            authenticator,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::auth::acl::AclEntry;
    use crate::auth::authn::tests::Fake;
    use crate::auth::authn::{ChainSettings, StaticUser, StaticUsers, hash_password};
    use crate::auth::keys::tests::{RSA_CERT, RSA_PKCS1_KEY};
    use crate::auth::keys::{SigningKey, TrustStore};

    const SERVICE: &str = "registry.test";
    const SCOPE: &str = "repository:app:pull";

    fn acl(rules: serde_json::Value) -> Acl {
        let rules: Vec<AclEntry> = serde_json::from_value(rules).unwrap();
        Acl::compile(&rules).unwrap()
    }

    /// The ACL of the label-deny case: `group: contractors` gets nothing, anyone else pulls.
    fn deny_contractors() -> Acl {
        acl(serde_json::json!([
            {"match": {"labels": {"group": "contractors"}}, "actions": []},
            {"match": {"labels": {"by": "contractors"}}, "actions": []},
            {"match": {"account": "/.+/"}, "actions": ["pull"]},
        ]))
    }

    fn service(policy: Policy, refresh_ttl: Duration) -> TokenService {
        let key = SigningKey::from_pem(RSA_PKCS1_KEY.as_bytes(), RSA_CERT.as_bytes()).unwrap();
        let mut own = TrustStore::new();
        own.add_signing_key(&key).unwrap();
        let audience = format!("{SERVICE}/refresh");
        let refresh = RefreshTokens {
            issuer: TokenIssuer::new(key.clone(), "iss", refresh_ttl),
            verifier: TokenVerifier::new(own, vec!["iss".into()], audience.clone()),
            audience,
        };
        let issuer = TokenIssuer::new(key, "iss", Duration::from_secs(300));
        TokenService::new(SERVICE.into(), issuer, Some(refresh), policy)
    }

    fn chain(a: Vec<Arc<dyn crate::auth::authn::Authenticator>>) -> Chain {
        Chain::new(a, ChainSettings::default())
    }

    fn statics(users: &[(&str, &[(&str, &str)])]) -> Chain {
        let map: BTreeMap<String, StaticUser> = users
            .iter()
            .map(|(u, labels)| {
                let user = StaticUser {
                    password: Some(hash_password(&format!("{u}-pw"), 4)),
                    labels: labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                        .collect(),
                };
                (u.to_string(), user)
            })
            .collect();
        chain(vec![Arc::new(StaticUsers::new(&map, None).unwrap())])
    }

    fn request(credentials: Credentials) -> TokenRequest {
        TokenRequest {
            service: Some(SERVICE.into()),
            scopes: vec![SCOPE.into()],
            credentials,
            client: RequestInfo {
                ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                service: SERVICE.into(),
            },
            want_refresh: true,
        }
    }

    fn password(user: &str, pw: &str) -> Credentials {
        Credentials::Password {
            username: user.into(),
            password: pw.into(),
        }
    }

    fn exp_of(token: &str) -> i64 {
        let payload = token.split('.').nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_slice(
            &data_encoding::BASE64URL_NOPAD
                .decode(payload.as_bytes())
                .unwrap(),
        )
        .unwrap();
        v["exp"].as_i64().unwrap()
    }

    /// A label deny rule keeps matching after a refresh, whether the authenticator can look the
    /// account up (static users: current labels) or not (the login's labels, carried).
    #[tokio::test]
    async fn label_deny_rules_still_apply_after_a_refresh() {
        let fake = Fake::new("contractors", &[("carol", "carol-pw")]);
        let policy = Policy {
            authn: chain(vec![Arc::new(fake)]),
            acl: deny_contractors(),
            ext_authz: None,
        };
        let s = service(policy, Duration::from_secs(3600));
        let t = s
            .handle(request(password("carol", "carol-pw")))
            .await
            .unwrap();
        assert!(t.granted.is_empty(), "denied by her label at login");
        let rt = t.refresh_token.expect("a refresh token");
        let t = s
            .handle(request(Credentials::RefreshToken(rt)))
            .await
            .unwrap();
        assert!(
            t.granted.is_empty(),
            "and after the refresh: {:?}",
            t.granted
        );

        s.replace_policy(Policy {
            authn: statics(&[("dan", &[("group", "contractors")]), ("erin", &[])]),
            acl: deny_contractors(),
            ext_authz: None,
        });
        for (user, pulls) in [("dan", false), ("erin", true)] {
            let t = s
                .handle(request(password(user, &format!("{user}-pw"))))
                .await
                .unwrap();
            let rt = t.refresh_token.unwrap();
            let t = s
                .handle(request(Credentials::RefreshToken(rt)))
                .await
                .unwrap();
            assert_eq!(!t.granted.is_empty(), pulls, "{user}");
        }
    }

    /// A refresh for an account that was removed (or whose authenticator is gone) is refused;
    /// one for an account still there works.
    #[tokio::test]
    async fn a_removed_users_refresh_is_refused() {
        let both = || Policy {
            authn: statics(&[("bob", &[]), ("erin", &[])]),
            acl: deny_contractors(),
            ext_authz: None,
        };
        let s = service(both(), Duration::from_secs(3600));
        let bob = s.handle(request(password("bob", "bob-pw"))).await.unwrap();
        let erin = s
            .handle(request(password("erin", "erin-pw")))
            .await
            .unwrap();
        let (bob_rt, erin_rt) = (bob.refresh_token.unwrap(), erin.refresh_token.unwrap());
        s.handle(request(Credentials::RefreshToken(bob_rt.clone())))
            .await
            .unwrap();

        s.replace_policy(Policy {
            authn: statics(&[("erin", &[])]),
            acl: deny_contractors(),
            ext_authz: None,
        });
        let err = s
            .handle(request(Credentials::RefreshToken(bob_rt.clone())))
            .await
            .err()
            .expect("bob was removed");
        assert!(matches!(err, TokenServiceError::Unauthorized(_)), "{err}");
        let t = s
            .handle(request(Credentials::RefreshToken(erin_rt)))
            .await
            .unwrap();
        assert_eq!(t.granted.len(), 1);

        // The static users replaced by another authenticator altogether: nobody to ask.
        s.replace_policy(Policy {
            authn: chain(vec![Arc::new(Fake::new("other", &[("bob", "x")]))]),
            acl: deny_contractors(),
            ext_authz: None,
        });
        assert!(
            s.handle(request(Credentials::RefreshToken(bob_rt)))
                .await
                .is_err()
        );
    }

    /// A new refresh token expires when the presented one does: refreshing weekly never
    /// extends the chain past the first login's lifetime.
    #[tokio::test]
    async fn a_refresh_chain_never_outlives_the_first_login() {
        let policy = || Policy {
            authn: statics(&[("bob", &[])]),
            acl: deny_contractors(),
            ext_authz: None,
        };
        // The first login's refresh lifetime is 100 s; the service redeeming it gives an hour.
        let short = service(policy(), Duration::from_secs(100));
        let first = short
            .handle(request(password("bob", "bob-pw")))
            .await
            .unwrap()
            .refresh_token
            .unwrap();
        let long = service(policy(), Duration::from_secs(3600));
        let mut rt = first.clone();
        for _ in 0..3 {
            let t = long
                .handle(request(Credentials::RefreshToken(rt)))
                .await
                .unwrap();
            rt = t.refresh_token.expect("a new refresh token");
            assert_eq!(exp_of(&rt), exp_of(&first), "the chain's end does not move");
        }
        // A fresh login on the long service gets the full hour.
        let fresh = long
            .handle(request(password("bob", "bob-pw")))
            .await
            .unwrap()
            .refresh_token
            .unwrap();
        assert!(exp_of(&fresh) > exp_of(&first) + 3000);
    }
}
