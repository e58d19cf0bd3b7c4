//! The imported config as a file (the notes as comments above the YAML), and the self-check
//! that runs ocimirror's config loader on it.

use std::path::Path;

use super::tree::Node;
use super::{Imported, Note, NoteKind};

impl Imported {
    /// The config alone, as YAML.
    pub fn config_yaml(&self) -> String {
        serde_saphyr::to_string(&self.config).expect("a config serialises")
    }

    /// The notes as indented lines, by kind.
    pub fn notes_text(&self) -> String {
        let mut t = String::new();
        for (kind, title) in [
            (NoteKind::Todo, "Before starting:"),
            (NoteKind::NotCarried, "Not carried over:"),
            (NoteKind::Changed, "Carried over with a difference:"),
        ] {
            let notes: Vec<&Note> = self.notes.iter().filter(|n| n.kind == kind).collect();
            if notes.is_empty() {
                continue;
            }
            t.push_str(title);
            t.push('\n');
            for n in notes {
                for (i, line) in wrap(&n.to_string(), 94).iter().enumerate() {
                    t.push_str(if i == 0 { "  - " } else { "    " });
                    t.push_str(line);
                    t.push('\n');
                }
            }
        }
        t
    }

    /// The output file: the notes as comments, then the config.
    pub fn render(&self) -> String {
        let mut t = String::from("# Written by `ocimirror config import` from\n");
        for s in &self.sources {
            t.push_str(&format!("#   {s}\n"));
        }
        let notes = self.notes_text();
        if !notes.is_empty() {
            t.push_str("#\n");
            for l in notes.lines() {
                t.push_str(&format!("# {l}\n"));
            }
        }
        t.push_str("# Check it with: ocimirror config check <this file>\n");
        t.push_str(&self.config_yaml());
        if !t.ends_with('\n') {
            t.push('\n');
        }
        t
    }

    /// Run the config loader on the output (referenced files read here, no environment) and
    /// note each problem. A referenced file missing here is one note to provide it, not an
    /// error: the output is often written for another machine.
    pub fn self_check(&mut self) {
        let Ok(dir) = tempfile::tempdir() else {
            return;
        };
        let path = dir.path().join("imported.yaml");
        if std::fs::write(&path, self.config_yaml()).is_err() {
            return;
        }
        let no_env: Vec<(String, String)> = Vec::new();
        let Err(errors) =
            crate::config::load(Some(&path), no_env, &crate::config::Overrides::default())
        else {
            return;
        };
        for p in errors.problems {
            let key: Vec<&str> = p.key.split('.').collect();
            let missing = self
                .config
                .get(&key)
                .and_then(Node::as_str)
                .filter(|f| FILE_KEYS.contains(&p.key.as_str()) && !Path::new(f).is_file())
                .map(str::to_owned);
            let note = match missing {
                Some(f) if self.notes.iter().any(|n| n.message.contains(&f)) => continue,
                Some(f) => {
                    format!("{f} is not a file here: make sure it is there where ocimirror runs")
                }
                None => format!("ocimirror config check: {}", p.message),
            };
            self.notes.push(Note {
                kind: NoteKind::Todo,
                key: p.key.clone(),
                message: note,
            });
        }
        self.notes.sort_by_key(|n| n.kind);
    }
}

/// Output keys that name files the config loader reads.
pub const FILE_KEYS: &[&str] = &[
    "auth.key",
    "auth.certificate",
    "auth.htpasswd",
    "auth.trusted_certificates",
    "auth.trusted_jwks",
    "tls.certificate",
    "tls.key",
];

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if !cur.is_empty() && cur.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{ImportInput, NoteKind, import, testing::noted};

    #[test]
    fn output_parses_as_a_config() {
        let i = import(&ImportInput {
            distribution: Some((
                "d".into(),
                "http:\n  addr: ':5000'\nauth:\n  htpasswd:\n    realm: r\n    path: /h\nstorage:\n  filesystem:\n    rootdirectory: /r\nproxy:\n  remoteurl: https://r.example\n  username: 'yes'\n  password: '0123'\n".into(),
            )),
            docker_auth: None,
            registry_env: Vec::new(),
            key_dir: "/k".into(),
        })
        .unwrap();
        let c: crate::config::Config = serde_saphyr::from_str(&i.render()).unwrap();
        assert_eq!(c.upstream.username.as_deref(), Some("yes"));
        assert_eq!(c.upstream.password.as_deref(), Some("0123"));
        let a = c.auth.unwrap();
        assert_eq!(a.htpasswd.as_deref(), Some(Path::new("/h")));
        assert_eq!(a.key.as_deref(), Some(Path::new("/k/token.key")));
        assert!(noted(&i, NoteKind::Todo, "auth.key"));
    }
}
