//! The token service: the Docker token protocol's logic, independent of HTTP. Authenticate the
//! client (password, refresh token or anonymous), authorize each requested scope against the
//! ACL (granted = requested ∩ allowed), and sign a token carrying what was granted.

use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use super::acl::Acl;
use super::authn::{AuthnError, Chain};
use super::token::{IssuedToken, TokenIssuer, TokenVerifier};
use super::{Identity, RepositoryNames, RequestInfo, ResourceActions};

/// What can change at run time (reloaded from the config file): who the users are and what
/// they may do.
pub struct Policy {
    pub authn: Chain,
    pub acl: Acl,
}

pub struct TokenService {
    pub service: String,
    issuer: TokenIssuer,
    refresh: Option<RefreshTokens>,
    policy: RwLock<Arc<Policy>>,
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
    ) -> Vec<String> {
        match self.names.get() {
            Some(names) if r.kind == "repository" => {
                policy
                    .acl
                    .authorize_as(identity, client, r, &names(&r.name))
            }
            _ => policy.acl.authorize(identity, client, r),
        }
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
        let identity = match req.credentials {
            Credentials::None => policy.authn.authenticate(req.client.ip, None).await,
            Credentials::Password { username, password } => {
                policy
                    .authn
                    .authenticate(req.client.ip, Some((&username, &password)))
                    .await
            }
            Credentials::RefreshToken(t) => self.redeem(&t),
        }
        .map_err(|e| match e {
            AuthnError::Throttled { retry_after } => TokenServiceError::Throttled(retry_after),
            AuthnError::Unavailable(m) => TokenServiceError::Unavailable(m),
            other => TokenServiceError::Unauthorized(other.to_string()),
        })?;
        let mut granted = Vec::new();
        for r in &requested {
            let actions = self.authorize(&policy, &identity, &req.client, r);
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
        let refresh_token = match (&self.refresh, req.want_refresh && !identity.is_anonymous()) {
            (Some(r), true) => Some(
                r.issuer
                    .issue(&identity.account, &r.audience, Vec::new())
                    .map_err(|e| TokenServiceError::Internal(e.to_string()))?
                    .token,
            ),
            _ => None,
        };
        tracing::info!(account = %identity.account, ip = %req.client.ip, requested = requested.len(), granted = granted.len(), "token issued");
        Ok(TokenResponse {
            access,
            refresh_token,
            granted,
        })
    }

    /// The identity a refresh token stands for. Labels are not carried: a refreshed identity is
    /// matched by account, and label-based rules need a fresh login.
    fn redeem(&self, token: &str) -> Result<Identity, AuthnError> {
        let r = self.refresh.as_ref().ok_or(AuthnError::WrongPassword)?;
        let claims = r.verifier.verify(token).map_err(|e| {
            tracing::info!(error = %e, "refresh token refused");
            AuthnError::WrongPassword
        })?;
        if claims.sub.is_empty() {
            return Err(AuthnError::WrongPassword);
        }
        Ok(Identity {
            account: claims.sub,
            labels: Default::default(),
        })
    }
}
