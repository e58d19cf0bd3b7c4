//! Reading a source document: values by dotted path, with every path the mapping consumed
//! remembered so that whatever was not carried over can be listed; Distribution's `REGISTRY_*`
//! environment overrides applied as Distribution applies them.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use super::ImportError;

/// One source document, with the paths the mapping consumed.
pub(super) struct Src {
    pub(super) label: &'static str,
    pub(super) root: Value,
    used: RefCell<BTreeSet<String>>,
}

impl Src {
    pub(super) fn parse(label: &'static str, path: &Path, text: &str) -> Result<Src, ImportError> {
        let root: Value = if text.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_saphyr::from_str(text).map_err(|e| ImportError::Yaml {
                path: path.display().to_string(),
                message: e.to_string().lines().next().unwrap_or_default().to_owned(),
            })?
        };
        let root = match root {
            Value::Null => Value::Object(Default::default()),
            v @ Value::Object(_) => v,
            _ => {
                return Err(ImportError::NotAMap {
                    path: path.display().to_string(),
                });
            }
        };
        Ok(Src {
            label,
            root,
            used: RefCell::new(BTreeSet::new()),
        })
    }

    pub(super) fn key(&self, path: &str) -> String {
        format!("{}: {path}", self.label)
    }

    /// The value at a dotted path, marking it (and everything under it) as accounted for.
    pub(super) fn get(&self, path: &str) -> Option<&Value> {
        let v = self.peek(path)?;
        self.used.borrow_mut().insert(path.to_owned());
        Some(v)
    }

    /// The value at a dotted path, without marking it.
    pub(super) fn peek(&self, path: &str) -> Option<&Value> {
        let mut cur = &self.root;
        for k in path.split('.') {
            cur = cur.as_object()?.get(k)?;
        }
        (!cur.is_null()).then_some(cur)
    }

    pub(super) fn has(&self, path: &str) -> bool {
        self.peek(path).is_some()
    }

    pub(super) fn mark(&self, path: &str) {
        if self.has(path) {
            self.used.borrow_mut().insert(path.to_owned());
        }
    }

    /// A scalar as a string (numbers and booleans too); empty strings count as absent.
    pub(super) fn str(&self, path: &str) -> Option<String> {
        let v = self.get(path)?;
        scalar_string(v).filter(|s| !s.is_empty())
    }

    pub(super) fn bool(&self, path: &str) -> Option<bool> {
        match self.get(path)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Some(true),
                "false" | "no" | "off" | "0" => Some(false),
                _ => None,
            },
            Value::Number(n) => n.as_i64().map(|i| i != 0),
            _ => None,
        }
    }

    /// The child keys of a map at `path` (empty when absent or not a map).
    pub(super) fn keys(&self, path: &str) -> Vec<String> {
        self.peek(path)
            .and_then(Value::as_object)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The outermost paths of which nothing was used: every setting the mapping did not
    /// account for, each reported once.
    pub(super) fn leftovers(&self) -> Vec<String> {
        let used = self.used.borrow();
        let mut out = Vec::new();
        fn walk(v: &Value, path: &str, used: &BTreeSet<String>, out: &mut Vec<String>) {
            if !path.is_empty() && used.contains(path) {
                return;
            }
            let under = format!("{path}.");
            let any_used_below = path.is_empty()
                || DESCEND.contains(&path)
                || used
                    .range(under.clone()..)
                    .next()
                    .is_some_and(|u| u.starts_with(&under));
            match v {
                Value::Object(o) if any_used_below => {
                    for (k, child) in o {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        walk(child, &p, used, out);
                    }
                }
                Value::Null => {}
                _ => out.push(path.to_owned()),
            }
        }
        walk(&self.root, "", &used, &mut out);
        out
    }
}

/// Sections whose unused keys are reported one by one (each has its own reason), even when
/// nothing in them was used.
const DESCEND: &[&str] = &[
    "log",
    "http",
    "storage",
    "storage.maintenance",
    "auth",
    "proxy",
    "redis",
    "redis.tls",
    "server",
    "token",
];

pub(super) fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Apply Distribution's environment overrides (`REGISTRY_STORAGE_S3_BUCKET=…` sets
/// `storage.s3.bucket`): shorter paths first, so `REGISTRY_AUTH=htpasswd` comes before
/// `REGISTRY_AUTH_HTPASSWD_PATH`. Returns the names applied.
pub fn apply_registry_env(root: &mut Value, vars: &[(String, String)]) -> Vec<String> {
    let mut vars: Vec<(Vec<String>, &str, &str)> = vars
        .iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix("REGISTRY_")?;
            if rest.is_empty() {
                return None;
            }
            let path = rest.split('_').map(str::to_ascii_lowercase).collect();
            Some((path, k.as_str(), v.as_str()))
        })
        .collect();
    vars.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.1.cmp(b.1)));
    let mut applied = Vec::new();
    for (path, name, raw) in vars {
        let parsed: Value = if raw.is_empty() {
            Value::String(String::new())
        } else {
            serde_saphyr::from_str::<Value>(raw)
                .ok()
                .filter(|v| !v.is_object() && !v.is_array() && !v.is_null())
                .unwrap_or_else(|| Value::String(raw.to_owned()))
        };
        // `auth` and `storage` are maps of named parameter sets: a bare name selects one.
        let parsed = match (&parsed, path.as_slice()) {
            (Value::String(s), [one]) if one == "auth" || one == "storage" => {
                let mut m = serde_json::Map::new();
                m.insert(s.clone(), Value::Object(Default::default()));
                Value::Object(m)
            }
            _ => parsed,
        };
        set_json(root, &path, parsed);
        applied.push(name.to_owned());
    }
    applied
}

fn set_json(v: &mut Value, path: &[String], value: Value) {
    if !v.is_object() {
        *v = Value::Object(Default::default());
    }
    let obj = v.as_object_mut().expect("object");
    match path {
        [] => {}
        [last] => {
            obj.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let child = obj
                .entry(first.clone())
                .or_insert_with(|| Value::Object(Default::default()));
            set_json(child, rest, value);
        }
    }
}

/// `KEY=VALUE` lines (blank lines and `#` comments skipped; `export ` and quotes allowed), as
/// in a systemd `EnvironmentFile` or `docker run --env-file`.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_environment_overrides_apply_like_distribution() {
        let mut v: Value =
            serde_saphyr::from_str("storage:\n  cache:\n    blobdescriptor: inmemory\n").unwrap();
        let applied = apply_registry_env(
            &mut v,
            &[
                (
                    "REGISTRY_AUTH_HTPASSWD_PATH".into(),
                    "/auth/htpasswd".into(),
                ),
                ("REGISTRY_AUTH".into(), "htpasswd".into()),
                ("REGISTRY_STORAGE_S3_SECURE".into(), "false".into()),
                ("REGISTRY_HTTP_ADDR".into(), ":5000".into()),
                ("REGISTRY_REDIS_DB".into(), "3".into()),
                ("OTHER".into(), "x".into()),
            ],
        );
        assert_eq!(applied.len(), 5);
        assert_eq!(v["auth"]["htpasswd"]["path"], "/auth/htpasswd");
        assert_eq!(v["storage"]["s3"]["secure"], false);
        assert_eq!(v["storage"]["cache"]["blobdescriptor"], "inmemory");
        assert_eq!(v["http"]["addr"], ":5000");
        assert_eq!(v["redis"]["db"], 3);
        assert_eq!(
            parse_env_file("# c\nexport A=1\nB=\"two words\"\n\nC='x=y'\nbad line\n"),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x=y".into())
            ]
        );
    }
}
