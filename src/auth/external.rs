//! docker_auth's external programs: `ext_auth` decides a login, `ext_authz` an access the ACL
//! has no rule for. Each is run directly (no shell: `command` is the program, `args` its
//! arguments), fed on standard input, under a timeout, with its output bounded; a program that
//! hangs, crashes, answers an unknown exit code or writes something unreadable decides nothing
//! (logged, and the login or the access is refused), and is killed if still running.
//!
//! Protocols, as docker_auth's:
//! - `ext_auth`: stdin `"<user> <password>"`; exit 0 allows (stdout may carry labels as
//!   `{"labels": {"group": ["a", "b"]}}`), 1 denies, 2 is "not my user" (the next authenticator
//!   is asked).
//! - `ext_authz`: stdin the request as JSON (`Account`, `Type`, `Name`, `Service`, `IP`,
//!   `Actions`, `Labels`); exit 0 allows the requested actions (or, when stdout is a JSON list
//!   of actions, those of them), 1 denies.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::authn::{Authenticator, AuthnError, ConfigProblem};
use super::{Identity, RequestInfo, ResourceActions};

/// Output read from a program at most; more is an error.
const MAX_OUTPUT: usize = 64 * 1024;

/// `auth.ext_auth` / `auth.ext_authz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalConfig {
    /// The program: a path, or a name looked up on `PATH`.
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// How long one run may take before it is killed and counts as failed.
    #[serde(default = "default_timeout")]
    pub timeout: String,
}

fn default_timeout() -> String {
    "10s".into()
}

/// A checked [`ExternalConfig`].
#[derive(Debug, Clone)]
pub struct Program {
    command: String,
    args: Vec<String>,
    timeout: Duration,
}

impl ExternalConfig {
    /// Check the program exists and the timeout parses; problems keyed under `key`.
    pub fn program(&self, key: &str) -> Result<Program, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let cmd = self.command.trim();
        let found = if cmd.is_empty() {
            false
        } else if cmd.contains('/') {
            Path::new(cmd).is_file()
        } else {
            std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        };
        if !found {
            problems.push(ConfigProblem::new(
                format!("{key}.command"),
                format!("{cmd:?} is not a program here (a path, or a name on PATH)"),
            ));
        }
        let timeout = match humantime::parse_duration(self.timeout.trim()) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                problems.push(ConfigProblem::new(
                    format!("{key}.timeout"),
                    format!("{:?} is not a duration above zero like 10s", self.timeout),
                ));
                None
            }
        };
        match timeout {
            Some(timeout) if problems.is_empty() => Ok(Program {
                command: cmd.to_owned(),
                args: self.args.clone(),
                timeout,
            }),
            _ => Err(problems),
        }
    }
}

impl Program {
    /// Run once with `input` on stdin: the exit code and stdout, or why there is none.
    async fn run(&self, input: &[u8]) -> Result<(i32, Vec<u8>), String> {
        let mut child = tokio::process::Command::new(&self.command)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.command))?;
        let mut stdin = child.stdin.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let input = input.to_vec();
        let work = async move {
            // A program that does not read its input must not block us: write what it takes.
            let write = async move {
                let _ = stdin.write_all(&input).await;
                drop(stdin);
            };
            let mut out = Vec::new();
            let mut err = Vec::new();
            let mut out_limited = (&mut stdout).take(MAX_OUTPUT as u64 + 1);
            let mut err_limited = (&mut stderr).take(4096);
            let read_out = out_limited.read_to_end(&mut out);
            let read_err = err_limited.read_to_end(&mut err);
            let (_, r_out, _) = tokio::join!(write, read_out, read_err);
            r_out.map_err(|e| format!("reading its output: {e}"))?;
            if out.len() > MAX_OUTPUT {
                return Err(format!("more than {MAX_OUTPUT} bytes of output"));
            }
            let status = child
                .wait()
                .await
                .map_err(|e| format!("waiting for it: {e}"))?;
            let code = status
                .code()
                .ok_or_else(|| format!("killed by a signal ({status})"))?;
            if !err.is_empty() {
                tracing::debug!(command = %self.command, stderr = %String::from_utf8_lossy(&err), "external program wrote to stderr");
            }
            Ok((code, out))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            // Dropping the child kills it.
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// `ext_auth`: an external program decides logins.
#[derive(Debug)]
pub struct ExternalAuthenticator {
    program: Program,
}

impl ExternalAuthenticator {
    pub fn new(program: Program) -> Self {
        ExternalAuthenticator { program }
    }
}

#[derive(Deserialize)]
struct AuthnAnswer {
    #[serde(default)]
    labels: BTreeMap<String, Vec<String>>,
}

#[async_trait]
impl Authenticator for ExternalAuthenticator {
    fn name(&self) -> &'static str {
        "ext_auth"
    }

    async fn authenticate(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Option<Identity>, AuthnError> {
        let failed = |why: String| {
            tracing::warn!(command = %self.program.command, user, error = %why, "ext_auth failed: login refused");
            AuthnError::Unavailable(format!("ext_auth: {why}"))
        };
        let input = format!("{user} {password}");
        let (code, out) = self.program.run(input.as_bytes()).await.map_err(failed)?;
        match code {
            0 => {
                let text = String::from_utf8_lossy(&out);
                let labels = if text.trim().is_empty() {
                    BTreeMap::new()
                } else {
                    serde_json::from_str::<AuthnAnswer>(text.trim())
                        .map_err(|e| {
                            failed(format!(
                                "allowed, but its output is not {{\"labels\": {{...}}}}: {e}"
                            ))
                        })?
                        .labels
                };
                Ok(Some(Identity {
                    account: user.to_owned(),
                    labels,
                    valid_until: None,
                }))
            }
            1 => Err(AuthnError::WrongPassword),
            2 => Ok(None),
            other => Err(failed(format!(
                "exit code {other} (0 allow, 1 deny, 2 no match)"
            ))),
        }
    }
}

/// `ext_authz`: an external program decides what the ACL has no rule for.
#[derive(Debug)]
pub struct ExternalAuthorizer {
    program: Program,
}

/// The request as docker_auth hands it to its external authorizer.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AuthzRequest<'a> {
    account: &'a str,
    #[serde(rename = "Type")]
    kind: &'a str,
    name: &'a str,
    service: &'a str,
    #[serde(rename = "IP")]
    ip: String,
    actions: &'a [String],
    labels: &'a BTreeMap<String, Vec<String>>,
}

impl ExternalAuthorizer {
    pub fn new(program: Program) -> Self {
        ExternalAuthorizer { program }
    }

    /// The actions granted; none when the program denies or fails.
    pub async fn authorize(
        &self,
        id: &Identity,
        req: &RequestInfo,
        requested: &ResourceActions,
    ) -> Vec<String> {
        let input = serde_json::to_vec(&AuthzRequest {
            account: &id.account,
            kind: &requested.kind,
            name: &requested.name,
            service: &req.service,
            ip: req.ip.to_string(),
            actions: &requested.actions,
            labels: &id.labels,
        })
        .expect("the request serialises");
        let failed = |why: String| {
            tracing::warn!(command = %self.program.command, account = %id.account, scope = %requested.to_scope(), error = %why, "ext_authz failed: access refused");
            Vec::new()
        };
        match self.program.run(&input).await {
            Err(e) => failed(e),
            Ok((0, out)) => {
                let text = String::from_utf8_lossy(&out);
                if text.trim().is_empty() {
                    return requested.actions.clone();
                }
                match serde_json::from_str::<Vec<String>>(text.trim()) {
                    Ok(allowed) => requested
                        .actions
                        .iter()
                        .filter(|a| allowed.iter().any(|x| x == *a || x == "*"))
                        .cloned()
                        .collect(),
                    Err(e) => failed(format!(
                        "allowed, but its output is not a list of actions: {e}"
                    )),
                }
            }
            Ok((1, _)) => Vec::new(),
            Ok((other, _)) => failed(format!("exit code {other} (0 allow, 1 deny)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use super::*;
    use crate::auth::authn::{Chain, ChainSettings};

    /// A shell script as the program (the test's own choice; ocimirror runs it directly).
    fn script(dir: &Path, name: &str, body: &str) -> ExternalConfig {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        ExternalConfig {
            command: p.display().to_string(),
            args: vec!["--flag".into()],
            timeout: "2s".into(),
        }
    }

    const AUTHN: &str = r#"read user pass
case "$user:$pass" in
  alice:good) echo '{"labels": {"group": ["devs"]}}'; exit 0 ;;
  alice:*) exit 1 ;;
  quiet:good) exit 0 ;;
  hang:*) sleep 30 ;;
  crash:*) kill -SEGV $$ ;;
  odd:*) exit 7 ;;
  junk:*) head -c 100000 /dev/zero; exit 0 ;;
  notjson:*) echo 'labels: yes'; exit 0 ;;
  args:*) [ "$1" = "--flag" ] && exit 0; exit 1 ;;
  *) exit 2 ;;
esac"#;

    fn ip() -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }

    #[tokio::test]
    async fn ext_auth_allow_deny_no_match_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = script(dir.path(), "authn", AUTHN);
        let ext = Arc::new(ExternalAuthenticator::new(cfg.program("ext_auth").unwrap()));
        let fallback = Arc::new(crate::auth::authn::tests::Fake::new(
            "next",
            &[("bob", "bobs")],
        ));
        let settings = ChainSettings {
            cache_ttl: Duration::ZERO,
            ..Default::default()
        };
        let chain = Chain::new(vec![ext, fallback], settings);
        let login = |u: &'static str, p: &'static str| chain.authenticate(ip(), Some((u, p)));

        let id = login("alice", "good").await.unwrap();
        assert_eq!(id.account, "alice");
        assert_eq!(id.labels["group"], vec!["devs"]);
        assert!(login("quiet", "good").await.unwrap().labels.is_empty());
        assert!(login("args", "x").await.is_ok(), "args are passed");
        assert_eq!(
            login("alice", "bad").await.unwrap_err(),
            AuthnError::WrongPassword
        );
        // Exit 2: the next authenticator decides.
        assert_eq!(login("bob", "bobs").await.unwrap().account, "bob");
        assert_eq!(
            login("carol", "x").await.unwrap_err(),
            AuthnError::UnknownUser
        );
        // Hung, crashed, unknown code, flood, unreadable labels: refused, never let in.
        for user in ["hang", "crash", "odd", "junk", "notjson"] {
            let e = login(user, "good").await.unwrap_err();
            assert!(matches!(e, AuthnError::Unavailable(_)), "{user}: {e:?}");
        }
        // A program that is not there is refused at load time.
        let missing = ExternalConfig {
            command: "/nonexistent/prog".into(),
            args: vec![],
            timeout: "0s".into(),
        };
        assert_eq!(missing.program("ext_auth").unwrap_err().len(), 2);
    }

    #[tokio::test]
    async fn ext_authz_allow_deny_subset_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        // The request arrives as JSON: decide on its name; echo it for the check below.
        let cfg = script(
            dir.path(),
            "authz",
            r#"req=$(cat)
echo "$req" > "$(dirname "$0")/last.json"
case "$req" in
  *'"Name":"open"'*) exit 0 ;;
  *'"Name":"some"'*) echo '["pull"]'; exit 0 ;;
  *'"Name":"closed"'*) exit 1 ;;
  *'"Name":"hang"'*) sleep 30 ;;
  *'"Name":"junk"'*) echo 'not json'; exit 0 ;;
  *) exit 9 ;;
esac"#,
        );
        let z = ExternalAuthorizer::new(cfg.program("ext_authz").unwrap());
        let id = Identity {
            account: "alice".into(),
            labels: BTreeMap::from([("group".into(), vec!["devs".into()])]),
            valid_until: None,
        };
        let req = RequestInfo {
            ip: ip(),
            service: "svc".into(),
        };
        let ask = |name: &str| ResourceActions {
            kind: "repository".into(),
            name: name.into(),
            actions: vec!["pull".into(), "push".into()],
        };
        assert_eq!(z.authorize(&id, &req, &ask("open")).await, ["pull", "push"]);
        let sent: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("last.json")).unwrap()).unwrap();
        assert_eq!(sent["Account"], "alice");
        assert_eq!(sent["Type"], "repository");
        assert_eq!(sent["IP"], "127.0.0.1");
        assert_eq!(sent["Labels"]["group"][0], "devs");
        assert_eq!(z.authorize(&id, &req, &ask("some")).await, ["pull"]);
        for name in ["closed", "hang", "junk", "other"] {
            assert!(
                z.authorize(&id, &req, &ask(name)).await.is_empty(),
                "{name}"
            );
        }
    }
}
