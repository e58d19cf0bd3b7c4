//! LDAP logins (`auth.ldap_auth`, docker_auth's keys): search the directory as the bind user
//! for the one entry the filter finds (`${account}` escaped per RFC 4515, so `*` or `)(uid=*`
//! in a user name match nothing but themselves), then bind as that entry with the given
//! password. Labels come from the entry's attributes (`labels: {group: {attribute: memberOf,
//! parse_cn: true}}`), so ACL rules can match directory groups.
//!
//! A directory that cannot be reached, or answers anything but success or "invalid
//! credentials", decides nothing: the login is refused as unavailable, never let in. An empty
//! password is refused before any bind (LDAP treats it as an anonymous bind that succeeds).
//! Each check uses its own connection under `timeout`; the chain's login cache in front keeps
//! the directory from seeing every token request.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry, ldap_escape};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::{Authenticator, AuthnError, ConfigProblem, Recheck};
use crate::auth::Identity;

/// `ldap_auth.labels.<name>`: a label from an attribute of the user's entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LdapLabel {
    pub attribute: String,
    /// Values are DNs (`cn=devs,ou=groups,…`): keep the first `cn`.
    pub parse_cn: bool,
    pub lower_case: bool,
}

/// `auth.ldap_auth`, with docker_auth's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LdapConfig {
    /// `host:port`.
    pub addr: String,
    /// `none`, `starttls` or `always` (LDAPS).
    pub tls: String,
    pub insecure_tls_skip_verify: bool,
    /// PEM CA certificates the server's certificate must chain to (default: the system's).
    pub ca_certificate: Option<PathBuf>,
    pub bind_dn: Option<String>,
    pub bind_password_file: Option<PathBuf>,
    pub base: String,
    /// With `${account}`, e.g. `(&(uid=${account})(objectClass=person))`.
    pub filter: String,
    pub labels: BTreeMap<String, LdapLabel>,
    /// Connect, and each LDAP operation.
    pub timeout: String,
}

impl Default for LdapConfig {
    fn default() -> Self {
        LdapConfig {
            addr: String::new(),
            tls: "always".into(),
            insecure_tls_skip_verify: false,
            ca_certificate: None,
            bind_dn: None,
            bind_password_file: None,
            base: String::new(),
            filter: String::new(),
            labels: BTreeMap::new(),
            timeout: "10s".into(),
        }
    }
}

pub struct LdapAuthenticator {
    url: String,
    starttls: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
    no_verify: bool,
    bind: Option<(String, String)>,
    base: String,
    filter: String,
    labels: BTreeMap<String, LdapLabel>,
    timeout: Duration,
}

impl std::fmt::Debug for LdapAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapAuthenticator")
            .field("url", &self.url)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl LdapConfig {
    /// Validate (every problem, keyed under `key`) and build. Reads the CA and the bind
    /// password; contacts no server.
    pub fn build(&self, key: &str) -> Result<LdapAuthenticator, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let k = |f: &str| format!("{key}.{f}");
        if self.addr.trim().is_empty() || !self.addr.contains(':') {
            problems.push(ConfigProblem::new(k("addr"), "must be host:port"));
        }
        let (scheme, starttls) = match self.tls.as_str() {
            "none" => ("ldap", false),
            "starttls" => ("ldap", true),
            "always" => ("ldaps", false),
            other => {
                problems.push(ConfigProblem::new(
                    k("tls"),
                    format!("{other:?} is not one of none, starttls, always"),
                ));
                ("ldap", false)
            }
        };
        if self.base.trim().is_empty() {
            problems.push(ConfigProblem::new(k("base"), "the search base is required"));
        }
        if !self.filter.contains("${account}") {
            problems.push(ConfigProblem::new(
                k("filter"),
                "must contain ${account}, e.g. (&(uid=${account})(objectClass=person))",
            ));
        }
        for (name, l) in &self.labels {
            if l.attribute.trim().is_empty() {
                problems.push(ConfigProblem::new(
                    k(&format!("labels.{name}.attribute")),
                    "the attribute to read is required",
                ));
            }
        }
        let timeout = super::parse_duration(&k("timeout"), &self.timeout, &mut problems);
        let bind = match (&self.bind_dn, &self.bind_password_file) {
            (Some(dn), Some(f)) => match std::fs::read_to_string(f) {
                Ok(pw) => Some((dn.clone(), pw.trim().to_owned())),
                Err(e) => {
                    problems.push(ConfigProblem::new(
                        k("bind_password_file"),
                        format!("cannot read {}: {e}", f.display()),
                    ));
                    None
                }
            },
            (Some(_), None) => {
                problems.push(ConfigProblem::new(
                    k("bind_password_file"),
                    "bind_dn is set but bind_password_file is not",
                ));
                None
            }
            (None, _) => None,
        };
        let tls = match &self.ca_certificate {
            Some(p) => match client_config(p) {
                Ok(c) => Some(c),
                Err(e) => {
                    problems.push(ConfigProblem::new(k("ca_certificate"), e));
                    None
                }
            },
            None => None,
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(LdapAuthenticator {
            url: format!("{scheme}://{}", self.addr.trim()),
            starttls,
            tls,
            no_verify: self.insecure_tls_skip_verify,
            bind,
            base: self.base.clone(),
            filter: self.filter.clone(),
            labels: self.labels.clone(),
            timeout: timeout.unwrap_or(Duration::from_secs(10)),
        })
    }
}

fn client_config(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| format!("{}: unreadable PEM: {e}", ca.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("{}: unusable certificate: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CERTIFICATE found", ca.display()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `cn=devs,ou=groups,dc=x` → `devs`; a value that is no DN stays as it is.
fn first_cn(v: &str) -> &str {
    v.split(',')
        .next()
        .and_then(|rdn| rdn.split_once('='))
        .filter(|(a, _)| a.trim().eq_ignore_ascii_case("cn"))
        .map_or(v, |(_, val)| val.trim())
}

impl LdapAuthenticator {
    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> AuthnError {
        tracing::warn!(url = %self.url, error = %e, "LDAP {what} failed");
        AuthnError::Unavailable(format!("LDAP directory: {what} failed"))
    }

    async fn connect(&self) -> Result<ldap3::Ldap, AuthnError> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.timeout)
            .set_starttls(self.starttls)
            .set_no_tls_verify(self.no_verify);
        if let Some(c) = &self.tls {
            settings = settings.set_config(c.clone());
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.url)
            .await
            .map_err(|e| self.unavailable("connecting", e))?;
        ldap3::drive!(conn);
        if let Some((dn, pw)) = &self.bind {
            ldap.with_timeout(self.timeout)
                .simple_bind(dn, pw)
                .await
                .and_then(|r| r.success())
                .map_err(|e| self.unavailable("the bind as bind_dn", e))?;
        }
        Ok(ldap)
    }

    /// The one entry the filter finds for `account`, if exactly one.
    async fn find(
        &self,
        ldap: &mut ldap3::Ldap,
        account: &str,
    ) -> Result<Option<SearchEntry>, AuthnError> {
        let filter = self.filter.replace("${account}", &ldap_escape(account));
        let mut attrs: Vec<&str> = self.labels.values().map(|l| l.attribute.as_str()).collect();
        if attrs.is_empty() {
            attrs.push("1.1");
        }
        let (entries, _) = ldap
            .with_timeout(self.timeout)
            .search(&self.base, Scope::Subtree, &filter, attrs)
            .await
            .and_then(|r| r.success())
            .map_err(|e| self.unavailable("the search", e))?;
        if entries.len() > 1 {
            tracing::warn!(
                account,
                found = entries.len(),
                "LDAP filter finds several entries: refused"
            );
            return Ok(None);
        }
        Ok(entries.into_iter().next().map(SearchEntry::construct))
    }

    fn labels_of(&self, entry: &SearchEntry) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        for (name, l) in &self.labels {
            let values: Vec<String> = entry
                .attrs
                .iter()
                .filter(|(a, _)| a.eq_ignore_ascii_case(&l.attribute))
                .flat_map(|(_, vs)| vs.iter())
                .map(|v| {
                    let v = if l.parse_cn { first_cn(v) } else { v.as_str() };
                    if l.lower_case {
                        v.to_lowercase()
                    } else {
                        v.to_owned()
                    }
                })
                .collect();
            if !values.is_empty() {
                out.insert(name.clone(), values);
            }
        }
        out
    }
}

#[async_trait]
impl Authenticator for LdapAuthenticator {
    fn name(&self) -> &'static str {
        "ldap"
    }

    async fn authenticate(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Option<Identity>, AuthnError> {
        if user.is_empty() {
            return Ok(None);
        }
        let mut ldap = self.connect().await?;
        let Some(entry) = self.find(&mut ldap, user).await? else {
            let _ = ldap.unbind().await;
            return Ok(None);
        };
        if password.is_empty() {
            let _ = ldap.unbind().await;
            return Err(AuthnError::WrongPassword);
        }
        let bound = ldap
            .with_timeout(self.timeout)
            .simple_bind(&entry.dn, password)
            .await
            .map_err(|e| self.unavailable("the bind as the user", e))?;
        let _ = ldap.unbind().await;
        match bound.rc {
            0 => Ok(Some(Identity {
                account: user.to_owned(),
                labels: self.labels_of(&entry),
                valid_until: None,
            })),
            // invalidCredentials
            49 => Err(AuthnError::WrongPassword),
            rc => Err(self.unavailable("the bind as the user", format!("result code {rc}"))),
        }
    }

    async fn recheck(&self, account: &str) -> Result<Recheck, AuthnError> {
        let mut ldap = self.connect().await?;
        let found = self.find(&mut ldap, account).await?;
        let _ = ldap.unbind().await;
        Ok(match found {
            Some(entry) => Recheck::Exists(self.labels_of(&entry)),
            None => Recheck::Gone,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::auth::acl::{Acl, AclEntry};
    use crate::auth::{RequestInfo, ResourceActions};

    const BASE: &str = "dc=example,dc=test";
    const ADMIN: &str = "cn=admin,dc=example,dc=test";

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A real OpenLDAP `slapd` with its own config, data and test CA in a temporary directory,
    /// on two loopback ports (plain with StartTLS, and LDAPS); stopped when dropped.
    struct Slapd {
        dir: tempfile::TempDir,
        ldap: u16,
        ldaps: u16,
    }

    impl Slapd {
        fn start() -> Option<Slapd> {
            let found = Command::new("slapd").arg("-VV").output().is_ok()
                && Path::new("/etc/ldap/schema/inetorgperson.schema").is_file();
            if !crate::util::tool_or_skip(found, "slapd", "apt-get install slapd ldap-utils") {
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            std::fs::create_dir(d.join("db")).unwrap();
            // Test CA and the server's certificate for 127.0.0.1.
            let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca.distinguished_name
                .push(rcgen::DnType::CommonName, "ldap test ca");
            let ca_cert = ca.self_signed(&ca_key).unwrap();
            let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut leaf = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            leaf.subject_alt_names
                .push(rcgen::SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            let cert = leaf.signed_by(&key, &issuer).unwrap();
            std::fs::write(d.join("ca.crt"), ca_cert.pem()).unwrap();
            std::fs::write(d.join("server.crt"), cert.pem()).unwrap();
            std::fs::write(d.join("server.key"), key.serialize_pem()).unwrap();
            std::fs::write(d.join("bind.pw"), "admin-secret\n").unwrap();
            let conf = format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 modulepath /usr/lib/ldap\nmoduleload back_mdb\n\
                 pidfile {d}/slapd.pid\n\
                 TLSCACertificateFile {d}/ca.crt\n\
                 TLSCertificateFile {d}/server.crt\n\
                 TLSCertificateKeyFile {d}/server.key\n\
                 database mdb\nsuffix \"{BASE}\"\nrootdn \"{ADMIN}\"\nrootpw admin-secret\n\
                 directory {d}/db\n",
                d = d.display()
            );
            std::fs::write(d.join("slapd.conf"), conf).unwrap();
            let mut ldif = format!(
                "dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: example\ndc: example\n\n"
            );
            for (uid, group) in [("alice", "devs"), ("bob", "Contractors"), ("star*", "devs")] {
                ldif.push_str(&format!(
                    "dn: uid={},{BASE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: x\n\
                     userPassword: {uid}-pw\nseeAlso: cn={group},ou=groups,{BASE}\n\n",
                    ldap3::dn_escape(uid)
                ));
            }
            std::fs::write(d.join("data.ldif"), ldif).unwrap();
            let add = Command::new("slapadd")
                .arg("-f")
                .arg(d.join("slapd.conf"))
                .arg("-l")
                .arg(d.join("data.ldif"))
                .output()
                .unwrap();
            assert!(add.status.success(), "slapadd: {add:?}");
            let s = Slapd {
                dir,
                ldap: free_port(),
                ldaps: free_port(),
            };
            s.run();
            Some(s)
        }

        fn run(&self) {
            let d = self.dir.path();
            let st = Command::new("slapd")
                .arg("-f")
                .arg(d.join("slapd.conf"))
                .arg("-h")
                .arg(format!(
                    "ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{}/",
                    self.ldap, self.ldaps
                ))
                .status()
                .unwrap();
            assert!(st.success(), "slapd did not start");
            for _ in 0..100 {
                if std::net::TcpStream::connect(("127.0.0.1", self.ldap)).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!("slapd does not listen");
        }

        fn stop(&self) {
            if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("slapd.pid")) {
                let _ = Command::new("kill").arg(pid.trim()).status();
                for _ in 0..100 {
                    if std::net::TcpStream::connect(("127.0.0.1", self.ldap)).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }

        fn config(&self, tls: &str) -> LdapConfig {
            let port = if tls == "always" {
                self.ldaps
            } else {
                self.ldap
            };
            LdapConfig {
                addr: format!("127.0.0.1:{port}"),
                tls: tls.into(),
                ca_certificate: Some(self.dir.path().join("ca.crt")),
                bind_dn: Some(ADMIN.into()),
                bind_password_file: Some(self.dir.path().join("bind.pw")),
                base: BASE.into(),
                filter: "(&(uid=${account})(objectClass=inetOrgPerson))".into(),
                labels: BTreeMap::from([(
                    "group".into(),
                    LdapLabel {
                        attribute: "seeAlso".into(),
                        parse_cn: true,
                        lower_case: true,
                    },
                )]),
                timeout: "5s".into(),
                ..Default::default()
            }
        }
    }

    impl Drop for Slapd {
        fn drop(&mut self) {
            self.stop();
        }
    }

    #[tokio::test]
    async fn passwords_unknown_users_injection_and_group_labels() {
        let Some(s) = Slapd::start() else { return };
        let a = s.config("none").build("ldap_auth").unwrap();
        let id = a.authenticate("alice", "alice-pw").await.unwrap().unwrap();
        assert_eq!(id.account, "alice");
        assert_eq!(id.labels["group"], ["devs"]);
        assert_eq!(
            a.authenticate("alice", "wrong").await.unwrap_err(),
            AuthnError::WrongPassword
        );
        assert_eq!(
            a.authenticate("alice", "").await.unwrap_err(),
            AuthnError::WrongPassword,
            "an empty password is no anonymous bind"
        );
        assert_eq!(a.authenticate("nobody", "x").await.unwrap(), None);
        // Filter injection finds nobody: the characters are matched literally.
        for user in ["*", ")(uid=*", "alice)(uid=*", "*)(|(uid=*", "al*"] {
            assert_eq!(
                a.authenticate(user, "alice-pw").await.unwrap(),
                None,
                "{user}"
            );
        }
        // A user whose name holds a `*` is found by exactly that name.
        let star = a.authenticate("star*", "star*-pw").await.unwrap().unwrap();
        assert_eq!(star.account, "star*");
        assert_eq!(
            a.recheck("alice").await.unwrap(),
            Recheck::Exists(id.labels.clone())
        );
        assert_eq!(a.recheck("nobody").await.unwrap(), Recheck::Gone);

        // The directory group, as a label, decides an ACL rule.
        let rules: Vec<AclEntry> = serde_json::from_value(serde_json::json!([
            {"match": {"labels": {"group": "contractors"}}, "actions": []},
            {"match": {"account": "/.+/"}, "actions": ["pull"]},
        ]))
        .unwrap();
        let acl = Acl::compile(&rules).unwrap();
        let req = RequestInfo {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            service: "s".into(),
        };
        let want = ResourceActions {
            kind: "repository".into(),
            name: "app".into(),
            actions: vec!["pull".into()],
        };
        let bob = a.authenticate("bob", "bob-pw").await.unwrap().unwrap();
        assert_eq!(bob.labels["group"], ["contractors"]);
        assert!(acl.authorize(&bob, &req, &want).is_empty());
        assert_eq!(acl.authorize(&id, &req, &want), ["pull"]);
    }

    #[tokio::test]
    async fn starttls_ldaps_and_a_directory_that_goes_away() {
        let Some(s) = Slapd::start() else { return };
        for tls in ["starttls", "always"] {
            let a = s.config(tls).build("ldap_auth").unwrap();
            assert!(
                a.authenticate("alice", "alice-pw").await.unwrap().is_some(),
                "{tls}"
            );
            assert_eq!(
                a.authenticate("alice", "nope").await.unwrap_err(),
                AuthnError::WrongPassword
            );
        }
        // A server certificate from an untrusted CA: refused, not let in.
        let mut untrusted = s.config("always");
        untrusted.ca_certificate = None;
        let a = untrusted.build("ldap_auth").unwrap();
        assert!(matches!(
            a.authenticate("alice", "alice-pw").await,
            Err(AuthnError::Unavailable(_))
        ));

        // Stopped mid-run: every login refused as unavailable, whatever the password.
        let a = s.config("none").build("ldap_auth").unwrap();
        assert!(a.authenticate("alice", "alice-pw").await.unwrap().is_some());
        s.stop();
        for pw in ["alice-pw", "wrong", ""] {
            assert!(
                matches!(
                    a.authenticate("alice", pw).await,
                    Err(AuthnError::Unavailable(_))
                ),
                "{pw:?}"
            );
        }
        assert!(a.recheck("alice").await.is_err());
        // Back again: logins work.
        s.run();
        assert!(a.authenticate("alice", "alice-pw").await.unwrap().is_some());
    }

    #[test]
    fn config_problems_are_all_reported() {
        let c = LdapConfig {
            addr: "nohost".into(),
            tls: "sometimes".into(),
            filter: "(uid=x)".into(),
            bind_dn: Some("cn=x".into()),
            labels: BTreeMap::from([("g".into(), LdapLabel::default())]),
            timeout: "soon".into(),
            ..Default::default()
        };
        let keys: Vec<String> = c
            .build("ldap_auth")
            .unwrap_err()
            .into_iter()
            .map(|p| p.key)
            .collect();
        for k in [
            "ldap_auth.addr",
            "ldap_auth.tls",
            "ldap_auth.base",
            "ldap_auth.filter",
            "ldap_auth.labels.g.attribute",
            "ldap_auth.timeout",
            "ldap_auth.bind_password_file",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k}: {keys:?}");
        }
        assert_eq!(first_cn("cn=Devs,ou=groups,dc=x"), "Devs");
        assert_eq!(first_cn("plain"), "plain");
    }
}
