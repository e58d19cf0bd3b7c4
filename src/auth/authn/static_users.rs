//! Static users: docker_auth's `users:` map and an htpasswd file, with bcrypt hashes.
//!
//! Differences from docker_auth, all refusals at load time: a named user must have a password
//! (docker_auth accepts any password for a user without one); the anonymous user `""` must not
//! have one, nor labels (the anonymous identity is always `account: ""` with no labels); hashes
//! must be bcrypt.
//!
//! bcrypt runs on tokio's blocking pool, at most half the cores at a time, so a burst of logins
//! neither stalls the async threads nor takes every core. An unknown user costs a check against a
//! dummy hash of the highest configured cost, so response time does not reveal which users exist.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::{Authenticator, AuthnError, ConfigProblem, Recheck};
use crate::auth::Identity;

const MIN_COST: u32 = 4;
const MAX_COST: u32 = 31;
/// bcrypt uses the first 72 bytes of a password.
const BCRYPT_MAX_PASSWORD: usize = 72;
/// Salt and hash of a well-formed bcrypt string that no password is checked against on purpose;
/// with the cost put in front it makes the dummy that unknown users are checked against (bcrypt
/// costs the same whatever the salt and hash, so nothing needs hashing at start-up).
const DUMMY_SALT_AND_HASH: &str = "7DPkbohEULFYd3eGt0uWD.yZbdY79wrkClpE0whvzCMf5st.Wx61O";

fn dummy_hash(cost: u32) -> Arc<str> {
    format!("$2y${cost:02}${DUMMY_SALT_AND_HASH}").into()
}

/// One entry of the `users:` map, as in docker_auth.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticUser {
    /// A bcrypt hash (`$2y$…`, `$2b$…`, `$2a$…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, Vec<String>>,
}

impl fmt::Debug for StaticUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticUser")
            .field("password", &self.password.as_ref().map(|_| "<bcrypt hash>"))
            .field("labels", &self.labels)
            .finish()
    }
}

/// One `user:hash` line of an htpasswd file.
#[derive(Clone, PartialEq, Eq)]
pub struct HtpasswdEntry {
    /// 1-based line number.
    pub line: usize,
    pub user: String,
    pub hash: String,
}

impl fmt::Debug for HtpasswdEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HtpasswdEntry")
            .field("line", &self.line)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// What kind of hash a non-bcrypt htpasswd entry holds, for the error message.
fn hash_kind(hash: &str) -> &'static str {
    if hash.starts_with("$apr1$") {
        "an Apache MD5 ($apr1$) hash"
    } else if hash.starts_with("{SHA}") {
        "a SHA-1 ({SHA}) hash"
    } else if hash.starts_with("$1$") {
        "an MD5-crypt ($1$) hash"
    } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
        "a SHA-crypt ($5$/$6$) hash"
    } else if hash.len() == 13 && !hash.starts_with('$') {
        "a DES crypt hash"
    } else if hash.starts_with("$2") {
        "a malformed bcrypt hash"
    } else {
        "not a bcrypt hash (it may be a plain-text password)"
    }
}

fn check_bcrypt(hash: &str) -> Result<u32, String> {
    match hash.parse::<bcrypt::HashParts>() {
        Ok(parts) if (MIN_COST..=MAX_COST).contains(&parts.get_cost()) => Ok(parts.get_cost()),
        Ok(parts) => Err(format!(
            "bcrypt cost {} is outside {MIN_COST}..={MAX_COST}",
            parts.get_cost()
        )),
        Err(_) => Err(format!(
            "{}; only bcrypt is supported (htpasswd -B, or ocimirror hash-password)",
            hash_kind(hash)
        )),
    }
}

/// Parse htpasswd text (`user:hash` lines as written by `htpasswd -nB`; blank lines and `#`
/// comments are skipped). Every problem is reported, each naming its line; no message contains
/// the hash.
pub fn parse_htpasswd(text: &str) -> Result<Vec<HtpasswdEntry>, Vec<String>> {
    let mut entries: Vec<HtpasswdEntry> = Vec::new();
    let mut problems = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = l.split_once(':') else {
            problems.push(format!("line {line}: expected user:hash"));
            continue;
        };
        if user.is_empty() {
            problems.push(format!("line {line}: empty user name"));
            continue;
        }
        if let Err(e) = check_bcrypt(hash) {
            problems.push(format!("line {line} (user {user:?}): {e}"));
            continue;
        }
        if let Some(first) = entries.iter().find(|e| e.user == user) {
            problems.push(format!(
                "line {line}: user {user:?} is already defined on line {}",
                first.line
            ));
            continue;
        }
        entries.push(HtpasswdEntry {
            line,
            user: user.to_owned(),
            hash: hash.to_owned(),
        });
    }
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(problems)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashPasswordError {
    #[error("bcrypt cost {0} is outside {MIN_COST}..={MAX_COST}")]
    Cost(u32),
    #[error("the password is longer than bcrypt's 72 bytes; the rest would be ignored")]
    TooLong,
    #[error("the password is empty")]
    Empty,
    #[error("hashing failed: {0}")]
    Failed(String),
}

/// Hash a password for the config (`$2y$`, as `htpasswd -B` writes), refusing what would make a
/// weak or surprising hash: a cost outside 4..=31, an empty password, or one over 72 bytes.
pub fn try_hash_password(password: &str, cost: u32) -> Result<String, HashPasswordError> {
    if !(MIN_COST..=MAX_COST).contains(&cost) {
        return Err(HashPasswordError::Cost(cost));
    }
    if password.is_empty() {
        return Err(HashPasswordError::Empty);
    }
    if password.len() > BCRYPT_MAX_PASSWORD {
        return Err(HashPasswordError::TooLong);
    }
    bcrypt::hash_with_result(password, cost)
        .map(|h| h.format_for_version(bcrypt::Version::TwoY))
        .map_err(|e| HashPasswordError::Failed(e.to_string()))
}

/// Hash a password for the config (`$2y$`, as `htpasswd -B` writes; bcrypt uses the first 72
/// bytes). For `ocimirror hash-password`; prefer [`try_hash_password`] to refuse odd input.
///
/// # Panics
/// If `cost` is outside 4..=31, or the system random source fails.
pub fn hash_password(password: &str, cost: u32) -> String {
    assert!(
        (MIN_COST..=MAX_COST).contains(&cost),
        "bcrypt cost {cost} is outside {MIN_COST}..={MAX_COST}"
    );
    bcrypt::hash_with_result(password, cost)
        .expect("bcrypt hashing with a valid cost")
        .format_for_version(bcrypt::Version::TwoY)
}

/// Password checks that may wait for a free CPU by default (`login_throttle.max_pending_checks`).
pub const DEFAULT_MAX_PENDING: usize = 16;

struct User {
    hash: Arc<str>,
    labels: BTreeMap<String, Vec<String>>,
}

pub struct StaticUsers {
    users: HashMap<String, User>,
    anonymous: bool,
    /// Checked for unknown users, with the highest configured cost.
    dummy: Arc<str>,
    permits: Arc<Semaphore>,
    /// Places for checks running or waiting for a permit: beyond them a login is refused at
    /// once, so a burst of logins cannot queue minutes of bcrypt work ahead of everyone.
    queue: Arc<Semaphore>,
    verifications: Arc<AtomicU64>,
}

impl fmt::Debug for StaticUsers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticUsers")
            .field("users", &self.users.len())
            .field("anonymous", &self.anonymous)
            .finish_non_exhaustive()
    }
}

impl StaticUsers {
    /// Build from the `users:` map and the text of an htpasswd file (`(source name, text)`).
    /// Problem keys: `users.<name>.password`, `users.<name>.labels`, `htpasswd`.
    pub fn new(
        users: &BTreeMap<String, StaticUser>,
        htpasswd: Option<(&str, &str)>,
    ) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut table = HashMap::new();
        let mut anonymous = false;
        let mut dummy_cost = MIN_COST;
        for (name, u) in users {
            let key = |field: &str| format!("users.{name}.{field}");
            if name.is_empty() {
                anonymous = true;
                if u.password.is_some() {
                    problems.push(ConfigProblem::new(
                        key("password"),
                        "the anonymous user \"\" cannot have a password",
                    ));
                }
                if !u.labels.is_empty() {
                    problems.push(ConfigProblem::new(
                        key("labels"),
                        "the anonymous user \"\" cannot have labels",
                    ));
                }
                continue;
            }
            let Some(hash) = &u.password else {
                problems.push(ConfigProblem::new(
                    key("password"),
                    format!(
                        "user {name:?} has no password; only the anonymous user \"\" may omit it"
                    ),
                ));
                continue;
            };
            match check_bcrypt(hash.trim()) {
                Ok(cost) => {
                    dummy_cost = dummy_cost.max(cost);
                    table.insert(
                        name.clone(),
                        User {
                            hash: hash.trim().into(),
                            labels: u.labels.clone(),
                        },
                    );
                }
                Err(e) => problems.push(ConfigProblem::new(
                    key("password"),
                    format!("user {name:?}: {e}"),
                )),
            }
        }
        if let Some((source, text)) = htpasswd {
            match parse_htpasswd(text) {
                Ok(entries) => {
                    for e in entries {
                        if users.contains_key(&e.user) {
                            problems.push(ConfigProblem::new(
                                "htpasswd",
                                format!(
                                    "{source} line {}: user {:?} is also in users:",
                                    e.line, e.user
                                ),
                            ));
                            continue;
                        }
                        if let Ok(cost) = check_bcrypt(&e.hash) {
                            dummy_cost = dummy_cost.max(cost);
                        }
                        table.insert(
                            e.user,
                            User {
                                hash: e.hash.into(),
                                labels: BTreeMap::new(),
                            },
                        );
                    }
                }
                Err(p) => problems.extend(
                    p.into_iter()
                        .map(|m| ConfigProblem::new("htpasswd", format!("{source} {m}"))),
                ),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(StaticUsers {
            users: table,
            anonymous,
            dummy: dummy_hash(dummy_cost),
            permits: Arc::new(Semaphore::new((parallel / 2).max(1))),
            queue: Arc::new(Semaphore::new((parallel / 2).max(1) + DEFAULT_MAX_PENDING)),
            verifications: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Build from the `users:` map and an htpasswd file on disk.
    pub fn load(
        users: &BTreeMap<String, StaticUser>,
        htpasswd: Option<&Path>,
    ) -> Result<Self, Vec<ConfigProblem>> {
        let text = match htpasswd {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(t) => Some((p.display().to_string(), t)),
                Err(e) => {
                    let mut problems = vec![ConfigProblem::new(
                        "htpasswd",
                        format!("cannot read {}: {e}", p.display()),
                    )];
                    // Still report the problems of the users: map.
                    if let Err(p) = Self::new(users, None) {
                        problems.extend(p);
                    }
                    return Err(problems);
                }
            },
            None => None,
        };
        Self::new(users, text.as_ref().map(|(s, t)| (s.as_str(), t.as_str())))
    }

    /// Whether the `""` user is configured, i.e. requests without credentials are allowed.
    pub fn allows_anonymous(&self) -> bool {
        self.anonymous
    }

    /// Number of named users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// bcrypt checks run so far, including dummy ones for unknown users (for tests and metrics).
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// At most `max_pending` password checks wait for a free CPU; more are refused at once.
    pub fn with_max_pending(mut self, max_pending: usize) -> Self {
        self.queue = Arc::new(Semaphore::new(
            self.permits.available_permits() + max_pending,
        ));
        self
    }

    /// Check `password` against `hash` on the blocking pool.
    async fn verify(&self, password: &str, hash: Arc<str>) -> Result<bool, AuthnError> {
        let _place = self.queue.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!(crate::metrics::AUTHN_CHECKS_REFUSED).increment(1);
            AuthnError::Busy
        })?;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| AuthnError::Unavailable("password checks are shut down".into()))?;
        let password = password.to_owned();
        let counter = self.verifications.clone();
        tokio::task::spawn_blocking(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false)
        })
        .await
        .map_err(|_| AuthnError::Unavailable("the password check failed".into()))
    }
}

#[async_trait]
impl Authenticator for StaticUsers {
    fn name(&self) -> &'static str {
        "static"
    }

    async fn authenticate(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Option<Identity>, AuthnError> {
        if user.is_empty() {
            // The chain handles anonymous requests itself.
            return Ok(None);
        }
        match self.users.get(user) {
            Some(u) => {
                if self.verify(password, u.hash.clone()).await? {
                    Ok(Some(Identity {
                        account: user.to_owned(),
                        labels: u.labels.clone(),
                        valid_until: None,
                    }))
                } else {
                    Err(AuthnError::WrongPassword)
                }
            }
            None => {
                // Spend the time a real check takes, so that timing does not reveal existence.
                self.verify(password, self.dummy.clone()).await?;
                Ok(None)
            }
        }
    }

    async fn recheck(&self, account: &str) -> Result<Recheck, AuthnError> {
        Ok(match self.users.get(account) {
            Some(u) => Recheck::Exists(u.labels.clone()),
            None => Recheck::Gone,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::auth::authn::tests::ip;
    use crate::auth::authn::{Chain, ChainSettings, Clock};
    use std::time::Duration;

    // From `htpasswd -nbB -C 4 alice wonderland` and `htpasswd -nbB -C 4 bob builder`.
    pub(crate) const ALICE: &str = "$2y$04$QDKkvYbOHhzL52XM1oOKo.LQU1yUXfVN4w5il0f1HWUAnjXakn/iW";
    pub(crate) const BOB: &str = "$2y$04$lSCtaRfqWVgxnoOtkixGYOkxDBBqIl7z6rLv/iMsb51iJyvZigdP.";

    fn users(yaml: &str) -> BTreeMap<String, StaticUser> {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn alice_and_anonymous() -> BTreeMap<String, StaticUser> {
        users(&format!(
            "alice: {{password: \"{ALICE}\", labels: {{group: [admins, devs]}}}}\n\"\": {{}}\n"
        ))
    }

    #[tokio::test]
    async fn checks_beyond_the_queue_are_refused_at_once() {
        let s = Arc::new(
            StaticUsers::new(&alice_and_anonymous(), None)
                .unwrap()
                .with_max_pending(2),
        );
        // Every CPU busy, as with long checks running.
        let cpus = s.permits.available_permits();
        let busy = s
            .permits
            .clone()
            .acquire_many_owned(cpus as u32)
            .await
            .unwrap();
        let waiting: Vec<_> = (0..cpus + 2)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.authenticate("alice", "wonderland").await })
            })
            .collect();
        while s.queue.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        // The queue is full: the next login is refused without waiting or checking.
        let before = s.verifications();
        assert_eq!(
            s.authenticate("alice", "wonderland").await,
            Err(AuthnError::Busy)
        );
        assert_eq!(s.verifications(), before);
        drop(busy);
        for w in waiting {
            assert!(
                w.await.unwrap().unwrap().is_some(),
                "the queued logins pass"
            );
        }
        assert!(
            s.authenticate("alice", "wonderland")
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn docker_auth_users_map() {
        let s = StaticUsers::new(&alice_and_anonymous(), None).unwrap();
        assert!(s.allows_anonymous());
        assert_eq!(s.len(), 1);
        let id = s
            .authenticate("alice", "wonderland")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(id.account, "alice");
        assert_eq!(id.labels["group"], vec!["admins", "devs"]);
        assert_eq!(
            s.authenticate("alice", "wonderlant").await,
            Err(AuthnError::WrongPassword)
        );
        // User names are case-sensitive, as in docker_auth.
        assert_eq!(s.authenticate("Alice", "wonderland").await, Ok(None));
        assert_eq!(s.authenticate("", "").await, Ok(None));
    }

    #[tokio::test]
    async fn unknown_users_cost_a_dummy_check() {
        let s = StaticUsers::new(&alice_and_anonymous(), None).unwrap();
        assert_eq!(s.verifications(), 0);
        assert_eq!(s.authenticate("mallory", "x").await, Ok(None));
        assert_eq!(s.verifications(), 1, "no bcrypt ran for the unknown user");
        assert_eq!(s.dummy.get(..7), Some("$2y$04$"));
        assert_eq!(s.authenticate("mallory", "y").await, Ok(None));
        assert_eq!(s.verifications(), 2);
    }

    #[tokio::test]
    async fn dummy_cost_follows_the_configured_hashes() {
        let h = hash_password("pw", 6);
        let s = StaticUsers::new(
            &users(&format!(
                "a: {{password: \"{ALICE}\"}}\nb: {{password: \"{h}\"}}\n"
            )),
            None,
        )
        .unwrap();
        assert_eq!(s.dummy.get(..7), Some("$2y$06$"));
        for cost in [MIN_COST, 12, MAX_COST] {
            assert_eq!(check_bcrypt(&dummy_hash(cost)), Ok(cost));
        }
    }

    #[tokio::test]
    async fn htpasswd_users() {
        let text = format!("# generated by htpasswd -nbB -C 4\nalice:{ALICE}\r\n\n  bob:{BOB}  \n");
        let entries = parse_htpasswd(&text).unwrap();
        assert_eq!(
            entries
                .iter()
                .map(|e| (e.line, e.user.as_str()))
                .collect::<Vec<_>>(),
            vec![(2, "alice"), (4, "bob")]
        );
        assert!(
            !format!("{entries:?}").contains("$2y$"),
            "Debug shows hashes"
        );
        let s = StaticUsers::new(&BTreeMap::new(), Some(("htpasswd", &text))).unwrap();
        assert!(!s.allows_anonymous());
        assert!(s.authenticate("bob", "builder").await.unwrap().is_some());
        assert!(
            s.authenticate("alice", "wonderland")
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            s.authenticate("bob", "wonderland").await,
            Err(AuthnError::WrongPassword)
        );
    }

    #[test]
    fn htpasswd_refuses_other_hashes_naming_the_line() {
        // From htpasswd -nbm, -nbs, -nbd, and a plain-text password.
        let text = format!(
            "alice:{ALICE}\ncarol:$apr1$KC7hJsY8$tbk.EW35GpiYjM33QR/bT.\n\
             dave:{{SHA}}z0jT3TdveclVlHs5WCpg5cPeIe8=\nerin:TemxJuuKEyntI\n\
             frank:hunter2\nno colon here\n:{BOB}\nalice:{BOB}\ngus:$2y$04$short\n"
        );
        let problems = parse_htpasswd(&text).unwrap_err();
        let expect = [
            ("line 2 (user \"carol\")", "Apache MD5"),
            ("line 3 (user \"dave\")", "SHA-1"),
            ("line 4 (user \"erin\")", "DES crypt"),
            ("line 5 (user \"frank\")", "plain-text"),
            ("line 6", "expected user:hash"),
            ("line 7", "empty user name"),
            ("line 8", "already defined on line 1"),
            ("line 9 (user \"gus\")", "malformed bcrypt"),
        ];
        assert_eq!(problems.len(), expect.len(), "{problems:#?}");
        for ((prefix, kind), p) in expect.iter().zip(&problems) {
            assert!(p.starts_with(prefix) && p.contains(kind), "{p}");
            assert!(!p.contains("hunter2") && !p.contains("KC7hJsY8"), "{p}");
        }
        // Through the authenticator, the file name is prefixed.
        let p = StaticUsers::new(&BTreeMap::new(), Some(("/etc/htpasswd", &text))).unwrap_err();
        assert!(
            p[0].message
                .starts_with("/etc/htpasswd line 2 (user \"carol\")")
        );
        assert!(p.iter().all(|p| p.key == "htpasswd"));
    }

    #[test]
    fn config_refusals() {
        let cases = [
            ("bob: {}", "users.bob.password", "has no password"),
            (
                "bob: {password: hunter2}",
                "users.bob.password",
                "plain-text",
            ),
            (
                "bob: {password: \"$apr1$KC7hJsY8$tbk.EW35GpiYjM33QR/bT.\"}",
                "users.bob.password",
                "Apache MD5",
            ),
            (
                "\"\": {password: \"$2y$04$QDKkvYbOHhzL52XM1oOKo.LQU1yUXfVN4w5il0f1HWUAnjXakn/iW\"}",
                "users..password",
                "cannot have a password",
            ),
            (
                "\"\": {labels: {a: [b]}}",
                "users..labels",
                "cannot have labels",
            ),
        ];
        for (yaml, key, msg) in cases {
            let p = StaticUsers::new(&users(yaml), None).unwrap_err();
            assert_eq!(p.len(), 1, "{yaml}: {p:?}");
            assert_eq!(p[0].key, key, "{yaml}");
            assert!(p[0].message.contains(msg), "{yaml}: {}", p[0].message);
            assert!(!p[0].message.contains("hunter2"));
        }
        // The same user in both places.
        let p = StaticUsers::new(
            &users(&format!("alice: {{password: \"{ALICE}\"}}")),
            Some(("f", &format!("alice:{BOB}\n"))),
        )
        .unwrap_err();
        assert!(p[0].message.contains("also in users:"), "{p:?}");
        // A missing file, with the users: problems reported alongside.
        let p = StaticUsers::load(&users("bob: {}"), Some(Path::new("/nonexistent"))).unwrap_err();
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn debug_hides_hashes() {
        let u = alice_and_anonymous();
        let s = format!("{u:?}");
        assert!(!s.contains("$2y$"), "{s}");
        assert!(s.contains("<bcrypt hash>"));
    }

    #[test]
    fn hashing() {
        let h = hash_password("s3cret", 4);
        assert!(h.starts_with("$2y$04$"), "{h}");
        assert!(bcrypt::verify("s3cret", &h).unwrap());
        assert!(check_bcrypt(&h).is_ok());
        // What htpasswd wrote verifies with our hashing and the other way round.
        assert!(bcrypt::verify("wonderland", ALICE).unwrap());
        let h = try_hash_password("s3cret", 5).unwrap();
        assert!(h.starts_with("$2y$05$"));
        assert_eq!(try_hash_password("x", 3), Err(HashPasswordError::Cost(3)));
        assert_eq!(try_hash_password("x", 32), Err(HashPasswordError::Cost(32)));
        assert_eq!(try_hash_password("", 4), Err(HashPasswordError::Empty));
        assert_eq!(
            try_hash_password(&"x".repeat(73), 4),
            Err(HashPasswordError::TooLong)
        );
        assert!(try_hash_password(&"x".repeat(72), 4).is_ok());
    }

    #[test]
    #[should_panic(expected = "outside 4..=31")]
    fn hash_password_panics_on_a_bad_cost() {
        hash_password("x", 2);
    }

    #[tokio::test]
    async fn chain_caches_successes_so_bcrypt_runs_once() {
        let s = Arc::new(StaticUsers::new(&alice_and_anonymous(), None).unwrap());
        let clock = Clock::manual();
        let chain = Chain::with_clock(vec![s.clone()], ChainSettings::default(), clock.clone());
        for _ in 0..3 {
            let id = chain
                .authenticate(ip(1), Some(("alice", "wonderland")))
                .await
                .unwrap();
            assert_eq!(id.account, "alice");
        }
        assert_eq!(s.verifications(), 1);
        // A wrong password is never served from the cache.
        assert_eq!(
            chain.authenticate(ip(1), Some(("alice", "nope"))).await,
            Err(AuthnError::WrongPassword)
        );
        assert_eq!(s.verifications(), 2);
        clock.advance(Duration::from_secs(301));
        chain
            .authenticate(ip(1), Some(("alice", "wonderland")))
            .await
            .unwrap();
        assert_eq!(s.verifications(), 3);
    }

    #[tokio::test]
    async fn chain_throttles_static_users_without_running_bcrypt() {
        let s = Arc::new(StaticUsers::new(&alice_and_anonymous(), None).unwrap());
        let clock = Clock::manual();
        let chain = Chain::with_clock(vec![s.clone()], ChainSettings::default(), clock.clone());
        for _ in 0..3 {
            assert_eq!(
                chain.authenticate(ip(1), Some(("alice", "guess"))).await,
                Err(AuthnError::WrongPassword)
            );
        }
        for _ in 0..2 {
            assert_eq!(
                chain.authenticate(ip(1), Some(("nobody", "guess"))).await,
                Err(AuthnError::UnknownUser)
            );
        }
        let ran = s.verifications();
        assert_eq!(ran, 5);
        assert!(matches!(
            chain
                .authenticate(ip(1), Some(("alice", "wonderland")))
                .await,
            Err(AuthnError::Throttled { .. })
        ));
        assert_eq!(s.verifications(), ran, "a throttled attempt ran bcrypt");
        clock.advance(Duration::from_secs(60));
        assert!(
            chain
                .authenticate(ip(1), Some(("alice", "wonderland")))
                .await
                .is_ok()
        );
    }
}
