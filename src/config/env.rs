//! Environment overrides (`OCIMIRROR_<SECTION>__<KEY>`) and command-line flags, applied to the
//! file's values before they are checked.

use serde_json::Value;

use super::{Overrides, Problem};

pub(super) const TOP_LEVEL: &[&str] = &[
    "listen",
    "data_dir",
    "mode",
    "log",
    "storage",
    "cache",
    "upstream",
    "server",
    "role",
    "auth",
    "expiry",
    "tls",
    "upstreams",
    "limits",
    "cluster",
];

pub(super) fn apply_env(
    value: &mut Value,
    var: &str,
    rest: &str,
    raw: &str,
) -> Result<(), Vec<Problem>> {
    let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if !TOP_LEVEL.contains(&path[0].as_str()) {
        // Not a config override (a script's own variable, say): leave it alone.
        return Ok(());
    }
    let parsed: Value = if raw.is_empty() {
        Value::String(String::new())
    } else {
        serde_saphyr::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
    };
    // Strings stay strings even when they look like numbers (passwords, tags).
    let parsed = match parsed {
        Value::Number(_) | Value::Bool(_) if is_string_key(&path) => Value::String(raw.to_owned()),
        v => v,
    };
    let mut cur = value;
    for (i, k) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        let obj = match cur {
            Value::Object(o) => o,
            _ => {
                return Err(vec![Problem {
                    key: var.into(),
                    line: None,
                    message: format!("{} is not a section", path[..i].join(".")),
                }]);
            }
        };
        if last {
            if obj.get(k).is_some_and(Value::is_object) && !parsed.is_object() {
                return Err(vec![Problem {
                    key: var.into(),
                    line: None,
                    message: format!(
                        "{} is a section: set its keys with {var}__<KEY>",
                        path.join(".")
                    ),
                }]);
            }
            obj.insert(k.clone(), parsed);
            return Ok(());
        }
        cur = obj
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Default::default()));
        if cur.is_null() {
            *cur = Value::Object(Default::default());
        }
    }
    Ok(())
}

fn is_string_key(path: &[String]) -> bool {
    matches!(
        path.last().map(String::as_str),
        Some(
            "password"
                | "username"
                | "url"
                | "listen"
                | "root"
                | "data_dir"
                | "level"
                | "max_age"
                | "max_size"
                | "interval"
                | "min_idle"
                | "certificate"
                | "key"
        )
    ) || path
        .last()
        .is_some_and(|k| k.ends_with("timeout") || k.ends_with("ttl"))
}

pub(super) fn apply_overrides(value: &mut Value, o: &Overrides) {
    // Sections are objects here: the environment cannot replace one with a plain value.
    let set = |value: &mut Value, path: &[&str], v: Value| {
        let mut cur = value;
        for k in &path[..path.len() - 1] {
            let Some(next) = cur.as_object_mut().map(|o| {
                o.entry(*k)
                    .or_insert_with(|| Value::Object(Default::default()))
            }) else {
                return;
            };
            cur = next;
        }
        if let Some(o) = cur.as_object_mut() {
            o.insert(path[path.len() - 1].to_owned(), v);
        }
    };
    if let Some(l) = &o.listen {
        set(value, &["listen"], l.clone().into());
    }
    if let Some(d) = &o.data_dir {
        set(value, &["data_dir"], d.display().to_string().into());
    }
    if let Some(u) = &o.upstream {
        set(value, &["upstream", "url"], u.clone().into());
    }
    if let Some(u) = &o.upstream_username {
        set(value, &["upstream", "username"], u.clone().into());
    }
    if let Some(p) = &o.upstream_password_file {
        set(
            value,
            &["upstream", "password_file"],
            p.display().to_string().into(),
        );
    }
    if let Some(t) = &o.tag_ttl {
        set(value, &["upstream", "tag_ttl"], t.clone().into());
    }
    if o.offline {
        set(value, &["mode"], "offline".into());
    }
    if o.read_only {
        set(value, &["storage", "read_only"], true.into());
    }
    if let Some(r) = o.role {
        set(
            value,
            &["role"],
            serde_json::to_value(r).expect("role serialises"),
        );
    }
}
