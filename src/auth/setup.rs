//! The `auth:` config section and how it becomes running parts: the token service (issuing
//! side), the verifier the registry gate uses, and the reloadable policy (users and ACL).
//! Every problem is reported at once, each with its key path for the config loader to locate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::acl::{Acl, AclEntry};
use super::authn::{
    AuthnConfig, GitHubConfig, LdapConfig, LoginCacheConfig, OidcConfig, StaticUser, ThrottleConfig,
};
use super::external::{ExternalAuthorizer, ExternalConfig};
use super::keys::{SigningKey, TrustStore, certificate_keys, load_signing_key};
use super::realip::RealIp;
use super::service::{Policy, RefreshTokens, TokenService};
use super::token::{KidFormat, TokenIssuer, TokenVerifier};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The token audience (`aud`) and the `service` of challenges.
    pub service: String,
    /// Token endpoint URL sent in challenges; default: this server's own address + `path`.
    pub realm: Option<String>,
    /// Where this process serves the token endpoint.
    pub path: String,
    /// `iss` of the tokens this process issues.
    pub issuer: String,
    pub token_ttl: String,
    pub refresh_token_ttl: String,
    /// Signing key (PKCS#8 or PKCS#1 PEM) and its certificate; `ocimirror keygen` writes both.
    pub key: Option<PathBuf>,
    pub certificate: Option<PathBuf>,
    /// Certificates (PEM) of earlier signing keys: a key rotation. Their tokens stay valid on
    /// `/v2` (and their refresh tokens redeemable) until they expire, and `jwks.json` lists
    /// them; nothing is signed with them.
    pub previous_keys: Vec<PathBuf>,
    /// Token header `kid`: `libtrust` (Distribution 2.x, docker_auth), `thumbprint` (RFC 7638,
    /// Distribution 3.x without a certificate bundle) or `none`.
    pub kid: String,
    /// Put the certificate chain in the token header (`x5c`): accepted by Distribution 2.x and
    /// 3.x when they have the certificate as `rootcertbundle`.
    pub x5c: bool,
    /// Issuers whose tokens the registry accepts; default: `issuer`.
    pub trusted_issuers: Vec<String>,
    /// Certificates (PEM bundle, e.g. docker_auth's) whose keys sign tokens the registry accepts.
    pub trusted_certificates: Option<PathBuf>,
    /// A JWKS file of keys whose tokens the registry accepts.
    pub trusted_jwks: Option<PathBuf>,
    /// Behind a proxy: the header holding the client address, for the ACL's `ip` and the login
    /// throttle; read only from `trusted_proxies` (see [`super::realip`]).
    pub real_ip_header: Option<String>,
    /// Addresses or CIDR prefixes of the proxies whose `real_ip_header` is believed.
    pub trusted_proxies: Vec<String>,
    // docker_auth's authentication keys:
    pub users: BTreeMap<String, StaticUser>,
    pub htpasswd: Option<PathBuf>,
    pub allow_anonymous: bool,
    pub github_auth: Option<GitHubConfig>,
    pub oidc_auth: Option<OidcConfig>,
    /// docker_auth's LDAP authenticator.
    pub ldap_auth: Option<LdapConfig>,
    /// docker_auth's external authenticator: a program decides logins.
    pub ext_auth: Option<ExternalConfig>,
    /// docker_auth's external authorizer: a program decides what no ACL rule matches.
    pub ext_authz: Option<ExternalConfig>,
    pub login_throttle: ThrottleConfig,
    pub login_cache: LoginCacheConfig,
    /// docker_auth's ordered ACL: the first matching rule decides.
    pub acl: Vec<AclEntry>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            service: "ocimirror".into(),
            realm: None,
            path: "/auth".into(),
            issuer: "ocimirror".into(),
            token_ttl: "5m".into(),
            refresh_token_ttl: "168h".into(),
            key: None,
            certificate: None,
            previous_keys: Vec::new(),
            kid: "libtrust".into(),
            x5c: true,
            trusted_issuers: Vec::new(),
            trusted_certificates: None,
            trusted_jwks: None,
            real_ip_header: None,
            trusted_proxies: Vec::new(),
            users: BTreeMap::new(),
            htpasswd: None,
            allow_anonymous: false,
            github_auth: None,
            oidc_auth: None,
            ldap_auth: None,
            ext_auth: None,
            ext_authz: None,
            login_throttle: ThrottleConfig::default(),
            login_cache: LoginCacheConfig::default(),
            acl: Vec::new(),
        }
    }
}

/// A problem with its key path relative to `auth`.
pub type Problem = (String, String);

/// What this process does with the auth section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Serve the token endpoint.
    pub issue: bool,
    /// Require tokens on `/v2`.
    pub verify: bool,
}

pub struct AuthParts {
    pub service: String,
    pub realm: Option<String>,
    pub path: String,
    /// How the token endpoint finds the client's address.
    pub real_ip: RealIp,
    pub token_service: Option<Arc<TokenService>>,
    pub verifier: Option<TokenVerifier>,
}

/// A key or certificate file that is absent or blank is a deployment step not yet done (a
/// Secret created with empty entries, a volume nobody filled): said so, with the command that
/// writes both, rather than as a PEM parse error.
fn unwritten_key_files(key: &Path, certificate: &Path) -> Option<String> {
    let unwritten: Vec<String> = [key, certificate]
        .into_iter()
        .filter_map(|p| match std::fs::read(p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Some(format!("{} does not exist", p.display()))
            }
            Ok(b) if b.iter().all(u8::is_ascii_whitespace) => {
                Some(format!("{} is empty", p.display()))
            }
            _ => None,
        })
        .collect();
    (!unwritten.is_empty()).then(|| {
        format!(
            "{}: write the signing key and its certificate with `ocimirror keygen --key {} \
             --certificate {}` (on Kubernetes, create the Secret from those two files)",
            unwritten.join(" and "),
            key.display(),
            certificate.display()
        )
    })
}

impl AuthConfig {
    fn authn(&self) -> AuthnConfig {
        AuthnConfig {
            users: self.users.clone(),
            htpasswd: self.htpasswd.clone(),
            allow_anonymous: self.allow_anonymous,
            github_auth: self.github_auth.clone(),
            oidc_auth: self.oidc_auth.clone(),
            ldap_auth: self.ldap_auth.clone(),
            ext_auth: self.ext_auth.clone(),
            login_throttle: self.login_throttle.clone(),
            login_cache: self.login_cache.clone(),
        }
    }

    /// Users and ACL: what a reload replaces.
    pub fn policy(&self) -> Result<Policy, Vec<Problem>> {
        let mut problems = Vec::new();
        let authn = self
            .authn()
            .build()
            .map_err(|ps| {
                problems.extend(ps.into_iter().map(|p| (p.key, p.message)));
            })
            .ok();
        let acl = Acl::compile(&self.acl)
            .map_err(|es| {
                problems.extend(
                    es.into_iter()
                        .map(|e| (format!("acl[{}].{}", e.index, e.field), e.message)),
                );
            })
            .ok();
        let ext_authz = match self.ext_authz.as_ref().map(|e| e.program("ext_authz")) {
            Some(Ok(p)) => Some(Arc::new(ExternalAuthorizer::new(p))),
            Some(Err(ps)) => {
                problems.extend(ps.into_iter().map(|p| (p.key, p.message)));
                None
            }
            None => None,
        };
        match (authn, acl) {
            (Some(authn), Some(acl)) if problems.is_empty() => Ok(Policy {
                authn,
                acl,
                ext_authz,
            }),
            _ => Err(problems),
        }
    }

    /// Build every part `roles` needs, reporting all problems.
    pub fn build(&self, roles: Roles) -> Result<AuthParts, Vec<Problem>> {
        let mut problems: Vec<Problem> = Vec::new();
        let mut duration = |key: &str, v: &str| match humantime::parse_duration(v.trim()) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                problems.push((key.into(), "must be greater than zero".into()));
                None
            }
            Err(e) => {
                problems.push((key.into(), format!("{v:?} is not a duration: {e}")));
                None
            }
        };
        let token_ttl = duration("token_ttl", &self.token_ttl);
        let refresh_ttl = duration("refresh_token_ttl", &self.refresh_token_ttl);
        let kid: Option<KidFormat> = self
            .kid
            .parse()
            .map_err(|_| {
                problems.push((
                    "kid".into(),
                    format!("{:?} is not one of libtrust, thumbprint, none", self.kid),
                ))
            })
            .ok();
        if !self.path.starts_with('/') || self.path.starts_with("/v2") || self.path.len() < 2 {
            problems.push((
                "path".into(),
                "must start with / and not be under /v2".into(),
            ));
        }
        if let Some(r) = &self.realm
            && !(r.starts_with("http://") || r.starts_with("https://"))
        {
            problems.push(("realm".into(), "must be an http:// or https:// URL".into()));
        }
        if roles.verify && !roles.issue && self.realm.is_none() {
            problems.push((
                "realm".into(),
                "a registry-only process must be told where clients get tokens".into(),
            ));
        }
        let real_ip = RealIp::new(self.real_ip_header.as_deref(), &self.trusted_proxies)
            .map_err(|ps| problems.extend(ps))
            .ok();
        let key: Option<SigningKey> = match (&self.key, &self.certificate) {
            (Some(k), Some(c)) => match unwritten_key_files(k, c) {
                Some(message) => {
                    problems.push(("key".into(), message));
                    None
                }
                None => load_signing_key(k, c)
                    .map_err(|e| problems.push(("key".into(), e.to_string())))
                    .ok(),
            },
            (None, None) => None,
            (Some(_), None) => {
                problems.push((
                    "certificate".into(),
                    "key is set but certificate is not".into(),
                ));
                None
            }
            (None, Some(_)) => {
                problems.push(("key".into(), "certificate is set but key is not".into()));
                None
            }
        };
        if roles.issue && self.key.is_none() && self.certificate.is_none() {
            problems.push((
                "key".into(),
                "the token service needs a signing key and certificate (ocimirror keygen writes them)".into(),
            ));
        }
        let mut trust = TrustStore::new();
        if let Some(k) = &key
            && let Err(e) = trust.add_signing_key(k)
        {
            problems.push(("certificate".into(), e.to_string()));
        }
        // Earlier signing keys: trusted like the current one (x5c root and key IDs).
        let mut previous = TrustStore::new();
        let mut previous_keys = Vec::new();
        for (i, p) in self.previous_keys.iter().enumerate() {
            let added = certificate_keys(p)
                .and_then(|ks| previous.add_cert_bundle_file(p).map(|_| ks))
                .and_then(|ks| trust.add_cert_bundle_file(p).map(|_| ks));
            match added {
                Ok(ks) => previous_keys.extend(ks),
                Err(e) => problems.push((format!("previous_keys[{i}]"), e.to_string())),
            }
        }
        if let Some(p) = &self.trusted_certificates
            && let Err(e) = trust.add_cert_bundle_file(p)
        {
            problems.push(("trusted_certificates".into(), e.to_string()));
        }
        if let Some(p) = &self.trusted_jwks
            && let Err(e) = trust.add_jwks_file(p)
        {
            problems.push(("trusted_jwks".into(), e.to_string()));
        }
        if roles.verify && trust.is_empty() && problems.is_empty() {
            problems.push((
                "trusted_certificates".into(),
                "the registry trusts no token signer: set key/certificate or trusted_certificates/trusted_jwks".into(),
            ));
        }
        let policy = if roles.issue {
            match self.policy() {
                Ok(p) => Some(p),
                Err(ps) => {
                    problems.extend(ps);
                    None
                }
            }
        } else {
            None
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let (token_ttl, refresh_ttl, kid, real_ip) = (
            token_ttl.expect("checked"),
            refresh_ttl.expect("checked"),
            kid.expect("checked"),
            real_ip.expect("checked"),
        );
        let issuers = if self.trusted_issuers.is_empty() {
            vec![self.issuer.clone()]
        } else {
            self.trusted_issuers.clone()
        };
        let token_service = match (roles.issue, key, policy) {
            (true, Some(key), Some(policy)) => {
                let mut issuer = TokenIssuer::new(key.clone(), self.issuer.clone(), token_ttl);
                issuer.kid = kid;
                issuer.include_x5c = self.x5c;
                let jwks = issuer.jwks(&previous_keys);
                let mut own = previous;
                own.add_signing_key(&key)
                    .map_err(|e| vec![("key".into(), e.to_string())])?;
                let audience = format!("{}/refresh", self.service);
                let refresh = RefreshTokens {
                    issuer: {
                        let mut r = TokenIssuer::new(key, self.issuer.clone(), refresh_ttl);
                        r.kid = kid;
                        r.include_x5c = self.x5c;
                        r
                    },
                    verifier: TokenVerifier::new(own, vec![self.issuer.clone()], audience.clone()),
                    audience,
                };
                Some(Arc::new(
                    TokenService::new(self.service.clone(), issuer, Some(refresh), policy)
                        .with_jwks(jwks),
                ))
            }
            _ => None,
        };
        Ok(AuthParts {
            service: self.service.clone(),
            realm: self.realm.clone(),
            path: self.path.clone(),
            real_ip,
            token_service,
            verifier: roles
                .verify
                .then(|| TokenVerifier::new(trust, issuers, self.service.clone())),
        })
    }
}
