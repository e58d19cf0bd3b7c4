//! The `cluster` section as written in the config file, and its check into [`ClusterSettings`].

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use url::Url;

/// The `cluster` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Address of the peer listener (`:5001` = all interfaces).
    pub listen: String,
    /// URL the other replicas reach this replica's peer listener at (per replica, e.g. the pod
    /// IP: `http://10.1.2.3:5001`).
    pub advertise: Option<String>,
    /// File holding the secret the fleet shares (read at start-up).
    pub secret_file: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            listen: ":5001".into(),
            advertise: None,
            secret_file: None,
        }
    }
}

/// The `cluster` section, checked.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub listen: SocketAddr,
    pub advertise: Url,
    pub secret_file: PathBuf,
}

impl ClusterConfig {
    /// The settings, or each problem as (key under `cluster.`, message).
    pub fn check(&self) -> Result<ClusterSettings, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let listen = crate::util::parse_listen(&self.listen, 5001)
            .map_err(|m| problems.push(("listen".into(), m)))
            .ok();
        let advertise = match self.advertise.as_deref().map(str::trim) {
            None | Some("") => {
                problems.push((
                    "advertise".into(),
                    "required: the URL the other replicas reach this one's cluster.listen at, \
                     e.g. http://<pod IP>:5001"
                        .into(),
                ));
                None
            }
            Some(a) => match Url::parse(a) {
                Ok(u)
                    if u.scheme() == "http"
                        && u.host_str().is_some()
                        && u.path() == "/"
                        && u.query().is_none()
                        && u.username().is_empty() =>
                {
                    Some(u)
                }
                Ok(_) => {
                    problems.push((
                        "advertise".into(),
                        format!("{a:?} must be an http:// URL of a host and port, without path or credentials (the peer listener speaks plain HTTP)"),
                    ));
                    None
                }
                Err(e) => {
                    problems.push(("advertise".into(), format!("{a:?} is not a URL: {e}")));
                    None
                }
            },
        };
        let secret_file = match &self.secret_file {
            Some(p) if !p.as_os_str().is_empty() => Some(p.clone()),
            _ => {
                problems.push((
                    "secret_file".into(),
                    "required: a file holding the secret every replica of the fleet shares".into(),
                ));
                None
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(ClusterSettings {
            listen: listen.expect("checked"),
            advertise: advertise.expect("checked"),
            secret_file: secret_file.expect("checked"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_checked() {
        let ok = ClusterConfig {
            listen: ":5001".into(),
            advertise: Some("http://10.0.0.5:5001".into()),
            secret_file: Some("/run/secrets/cluster".into()),
        };
        let s = ok.check().unwrap();
        assert_eq!(s.listen.port(), 5001);
        assert_eq!(s.advertise.as_str(), "http://10.0.0.5:5001/");
        let bad = ClusterConfig {
            listen: "nowhere".into(),
            advertise: Some("http://10.0.0.5:5001/fills".into()),
            secret_file: None,
        };
        let keys: Vec<String> = bad.check().unwrap_err().into_iter().map(|p| p.0).collect();
        assert_eq!(keys, ["listen", "advertise", "secret_file"]);
        let missing = ClusterConfig::default().check().unwrap_err();
        assert_eq!(missing.len(), 2, "{missing:?}");
    }
}
