//! The credentials the mirror presents to one upstream. The password may come from a file that
//! something else rewrites (ECR's registry password is a token that expires every 12 hours and a
//! sidecar or CronJob renews; Artifact Registry and ACR access tokens rotate too): the file is
//! read again when it changes (polled, or on SIGHUP) and when the upstream refuses the password
//! in force. Each change bumps a generation, so that tokens obtained with an older password are
//! no longer used.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub struct Credentials {
    /// The upstream's name, for logs and metrics.
    upstream: String,
    username: Option<String>,
    password: Mutex<Option<String>>,
    file: Option<PathBuf>,
    generation: AtomicU64,
}

impl Credentials {
    pub fn new(
        upstream: &str,
        username: Option<String>,
        password: Option<String>,
        file: Option<PathBuf>,
    ) -> Arc<Self> {
        Arc::new(Credentials {
            upstream: upstream.to_owned(),
            username,
            password: Mutex::new(password),
            file,
            generation: AtomicU64::new(0),
        })
    }

    /// Username and password for Basic auth (at the registry or its token endpoint), when a
    /// username is configured.
    pub fn basic(&self) -> Option<(String, String)> {
        let password = self.password.lock().expect("lock").clone();
        self.username
            .clone()
            .map(|u| (u, password.unwrap_or_default()))
    }

    pub fn configured(&self) -> bool {
        self.username.is_some()
    }

    /// Which password is in force: changes whenever it does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Read the password file again. True when it now holds another password than the one in
    /// force (which it replaces); false without a file, when it could not be read (the password
    /// in force stays), or when nothing changed.
    pub fn reload(&self) -> bool {
        let Some(file) = &self.file else {
            return false;
        };
        let read = match std::fs::read_to_string(file) {
            Ok(p) => p.trim_end_matches(['\n', '\r']).to_owned(),
            Err(e) => {
                tracing::warn!(upstream = %self.upstream, file = %file.display(), error = %e,
                    "cannot read the upstream password file again; the password in force stays");
                return false;
            }
        };
        if read.is_empty() {
            // A writer that truncates before writing: the next change brings the password.
            return false;
        }
        let mut current = self.password.lock().expect("lock");
        if current.as_deref() == Some(read.as_str()) {
            return false;
        }
        *current = Some(read);
        self.generation.fetch_add(1, Ordering::SeqCst);
        metrics::counter!(crate::metrics::UPSTREAM_PASSWORD_RELOADS, "upstream" => self.upstream.clone())
            .increment(1);
        tracing::info!(upstream = %self.upstream, file = %file.display(),
            "upstream password re-read; tokens obtained with the previous one are dropped");
        true
    }

    /// Re-read the password file whenever it changes (or on SIGHUP), for as long as these
    /// credentials are in use. Needs a tokio runtime; without a file, nothing to do.
    pub fn watch(self: &Arc<Self>) {
        let Some(file) = self.file.clone() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = Arc::downgrade(self);
        rt.spawn(async move {
            let mut watch = crate::watch::FileWatch::new(vec![file]);
            loop {
                watch.changed().await;
                match me.upgrade() {
                    Some(c) => {
                        c.reload();
                    }
                    None => return,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_file_replaces_the_password_and_bumps_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "one\n").unwrap();
        let c = Credentials::new(
            "default",
            Some("AWS".into()),
            Some("one".into()),
            Some(file.clone()),
        );
        assert_eq!(c.basic(), Some(("AWS".into(), "one".into())));
        assert!(!c.reload(), "same password: nothing changes");
        assert_eq!(c.generation(), 0);
        std::fs::write(&file, "two\r\n").unwrap();
        assert!(c.reload());
        assert_eq!(c.basic(), Some(("AWS".into(), "two".into())));
        assert_eq!(c.generation(), 1);
        // Truncated (a writer in the middle of its work) or gone: the password in force stays.
        std::fs::write(&file, "").unwrap();
        assert!(!c.reload());
        std::fs::remove_file(&file).unwrap();
        assert!(!c.reload());
        assert_eq!(c.basic(), Some(("AWS".into(), "two".into())));
        assert_eq!(c.generation(), 1);
    }

    #[test]
    fn without_a_file_nothing_is_reloaded() {
        let c = Credentials::new("default", None, None, None);
        assert!(!c.configured());
        assert_eq!(c.basic(), None);
        assert!(!c.reload());
    }
}
