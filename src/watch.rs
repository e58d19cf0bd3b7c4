//! Noticing that files an operator edits have changed: their modification times, looked at every
//! couple of seconds, or a SIGHUP. Polling needs no inotify and follows Kubernetes' ConfigMap and
//! Secret symlink swaps; it is how users, ACL and the TLS certificate reload without a restart.

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
