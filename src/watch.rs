//! Noticing that files an operator edits have changed: their modification times, looked at every
//! couple of seconds, or a SIGHUP. Polling needs no inotify and follows Kubernetes' ConfigMap and
//! Secret symlink swaps; it is how users, ACL, the TLS certificate and upstream password files
//! reload without a restart. SIGHUP never ends the process, whatever is configured.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{Signal, SignalKind, signal};

/// How often the files' modification times are looked at.
pub const POLL: Duration = Duration::from_secs(2);

pub struct FileWatch {
    files: Vec<PathBuf>,
    seen: Vec<Option<SystemTime>>,
    hup: Option<Signal>,
}

fn stamps(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// From now on, SIGHUP means "reload what can be reloaded" (every [`FileWatch`] wakes on it),
/// never the default "exit", whether or not anything is configured to reload: systemd's
/// `reload` and many operators send it. Each one is logged.
pub fn hangup_means_reload() {
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!(
                        "SIGHUP: reloading what can be reloaded (users and ACL, certificates, upstream password files, where configured)"
                    );
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP"),
    }
}

impl FileWatch {
    pub fn new(files: Vec<PathBuf>) -> Self {
        FileWatch {
            seen: stamps(&files),
            files,
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    /// Wait until one of the files changed (or appeared, or went) or a SIGHUP arrived.
    pub async fn changed(&mut self) {
        loop {
            let signalled = tokio::select! {
                _ = tokio::time::sleep(POLL) => false,
                _ = async {
                    match self.hup.as_mut() {
                        Some(h) => { h.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => true,
            };
            let now = stamps(&self.files);
            if signalled || now != self.seen {
                self.seen = now;
                return;
            }
        }
    }
}
