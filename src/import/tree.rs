//! The output config as a tree that keeps keys in the order they were set, so the imported
//! file reads like a hand-written one (serde_json's map sorts keys).

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq};
use serde_json::Value;

/// A YAML value that keeps its keys in the order they were set (serde_json's map sorts them).
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
    Str(String),
    Bool(bool),
    Int(i64),
}

impl Node {
    pub(super) fn map() -> Node {
        Node::Map(Vec::new())
    }

    /// Set `path` (creating maps on the way), replacing what was there.
    pub fn set(&mut self, path: &[&str], value: Node) {
        let Node::Map(entries) = self else {
            *self = Node::map();
            return self.set(path, value);
        };
        let (first, rest) = path.split_first().expect("non-empty path");
        let idx = match entries.iter().position(|(k, _)| k == first) {
            Some(i) => i,
            None => {
                entries.push((first.to_string(), Node::map()));
                entries.len() - 1
            }
        };
        if rest.is_empty() {
            entries[idx].1 = value;
        } else {
            if !matches!(entries[idx].1, Node::Map(_)) {
                entries[idx].1 = Node::map();
            }
            entries[idx].1.set(rest, value);
        }
    }

    pub fn get(&self, path: &[&str]) -> Option<&Node> {
        let Some((first, rest)) = path.split_first() else {
            return Some(self);
        };
        match self {
            Node::Map(entries) => entries
                .iter()
                .find(|(k, _)| k == first)
                .and_then(|(_, v)| v.get(rest)),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A JSON value, as the config loader sees it (keys sorted).
    pub fn to_json(&self) -> Value {
        match self {
            Node::Map(e) => {
                Value::Object(e.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
            Node::Seq(s) => Value::Array(s.iter().map(Node::to_json).collect()),
            Node::Str(s) => Value::String(s.clone()),
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::from(*i),
        }
    }

    /// From a source value: maps keep the source's key order where serde_json kept it.
    pub(super) fn from_json(v: &Value) -> Node {
        match v {
            Value::Object(o) => Node::Map(
                o.iter()
                    .map(|(k, v)| (k.clone(), Node::from_json(v)))
                    .collect(),
            ),
            Value::Array(a) => Node::Seq(a.iter().map(Node::from_json).collect()),
            Value::String(s) => Node::Str(s.clone()),
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Node::Int(i),
                None => Node::Str(n.to_string()),
            },
            Value::Null => Node::map(),
        }
    }

    /// Reorder a map's keys: those in `order` first, in that order, then the rest as they were.
    pub(super) fn reorder(&mut self, order: &[&str]) {
        if let Node::Map(entries) = self {
            entries.sort_by_key(|(k, _)| order.iter().position(|o| o == k).unwrap_or(order.len()));
        }
    }
}

impl Serialize for Node {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Map(entries) => {
                let mut m = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            Node::Seq(items) => {
                let mut q = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    q.serialize_element(i)?;
                }
                q.end()
            }
            Node::Str(v) => s.serialize_str(v),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Int(i) => s.serialize_i64(*i),
        }
    }
}

/// A string node.
pub(super) fn s(v: impl Into<String>) -> Node {
    Node::Str(v.into())
}
