//! Reading the config file: every structural problem reported rather than the first, and
//! problems located by line (the YAML as written, whatever its line endings).

use super::{Config, Problem};

/// Parse the file, reporting every structural problem (unknown key, wrong type, bad enum value)
/// rather than the first: after each error the offending entry, with the block nested under
/// it, is removed and the parse retried. Returns the config parsed from what remains.
pub(super) fn parse_yaml(text: &str) -> (Config, Vec<Problem>) {
    const MAX_PROBLEMS: usize = 50;
    let mut problems = Vec::new();
    let mut current = text.to_owned();
    loop {
        if current.trim().is_empty() {
            return (Config::default(), problems);
        }
        let err = match serde_saphyr::from_str::<Config>(&current) {
            Ok(c) => return (c, problems),
            Err(e) => e,
        };
        let line = err.location().map(|l| l.line() as usize).filter(|l| *l > 0);
        let msg = err.to_string();
        let first = msg.lines().next().unwrap_or("invalid YAML");
        // Drop the crate's own "error: line N column M:" prefix; we print the line ourselves.
        let message = match first.split_once(": ").and_then(|(_, rest)| {
            rest.strip_prefix("line ")
                .and_then(|r| r.split_once(": "))
                .map(|(_, m)| m)
        }) {
            Some(m) => m.to_owned(),
            None => first.trim_start_matches("error: ").to_owned(),
        };
        problems.push(Problem {
            key: line
                .and_then(|l| key_at_line(&current, l))
                .unwrap_or_else(|| "yaml".into()),
            line,
            message,
        });
        let pruned = line.and_then(|l| remove_entry(&current, l));
        match pruned {
            Some(p) if problems.len() < MAX_PROBLEMS => current = p,
            // A syntax error, or nothing left to remove: the rest cannot be interpreted.
            _ => return (Config::default(), problems),
        }
    }
}

/// Blank out the mapping entry on 1-based `line` and every more-indented line after it
/// (keeping line numbers stable for later reports). None when the line is not an entry.
pub(super) fn remove_entry(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let target = lines.get(line - 1)?;
    let trimmed = target.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') || !trimmed.contains(':') {
        return None;
    }
    let indent = target.len() - trimmed.len();
    let mut out: Vec<&str> = lines.clone();
    out[line - 1] = "";
    for l in out.iter_mut().skip(line) {
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if l.len() - t.len() <= indent {
            break;
        }
        *l = "";
    }
    // A parent left with no entries would now read as null and be reported again: make it an
    // explicit empty map, which takes the section's defaults.
    let parent = (0..line - 1).rev().find(|&i| {
        let t = out[i].trim_start();
        !t.is_empty() && !t.starts_with('#') && out[i].len() - t.len() < indent
    });
    if let Some(p) = parent {
        let p_indent = out[p].len() - out[p].trim_start().len();
        let has_children = out[p + 1..]
            .iter()
            .map(|l| (l.len() - l.trim_start().len(), l.trim_start()))
            .filter(|(_, t)| !t.is_empty() && !t.starts_with('#'))
            .take_while(|(i, _)| *i > p_indent)
            .next()
            .is_some();
        if !has_children && out[p].trim_end().ends_with(':') {
            let fixed = format!("{} {{}}", out[p].trim_end());
            let mut owned: Vec<String> = out.iter().map(|s| s.to_string()).collect();
            owned[p] = fixed;
            return Some(owned.join("\n"));
        }
    }
    Some(out.join("\n"))
}

/// The dotted key path of the block-style entry on 1-based `line`.
pub(super) fn key_at_line(text: &str, line: usize) -> Option<String> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    for (no, l) in text.lines().enumerate().take(line) {
        let trimmed = l.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        let indent = l.len() - trimmed.len();
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, key.trim().trim_matches(['"', '\'']).to_owned()));
        if no + 1 == line {
            return Some(
                stack
                    .iter()
                    .map(|(_, k)| k.as_str())
                    .collect::<Vec<_>>()
                    .join("."),
            );
        }
    }
    None
}

/// The 1-based line of a YAML key path, or of its deepest ancestor present. A path segment may
/// name list items (`acl[2]`, or `rules.1.keys.0` as the sections number them): an item is
/// located at its start (its `-`), in block and flow style alike.
pub fn find_line(text: &str, path: &[&str]) -> Option<usize> {
    let want: Vec<&str> = path
        .iter()
        .flat_map(|p| p.split(['[', ']']).filter(|s| !s.is_empty()))
        .collect();
    match walk_nodes(text, &want) {
        Some(found) => found,
        // Not YAML a parser reads to the end (the problem itself, then): look at the keys line
        // by line.
        None => find_line_by_indent(text, path),
    }
}

/// Where a node of a parsed YAML document sits: under the keys and item indices of its
/// collections.
enum Frame {
    /// A mapping, with the key whose value is being read (`None`: a key comes next).
    Map(Option<String>),
    /// A sequence, with the index of the item being read.
    Seq(usize),
}

/// [`find_line`] over the parser's events: `None` when the text does not parse to its end.
fn walk_nodes(text: &str, want: &[&str]) -> Option<Option<usize>> {
    use serde_saphyr::granit_parser::{Event, Parser};

    let mut frames: Vec<Frame> = Vec::new();
    // The path of the collection being read, one segment per frame but the root's.
    let mut path: Vec<String> = Vec::new();
    let mut best: Option<(usize, usize)> = None;
    let mut record = |path: &[String], seg: &str, line: usize| {
        let depth = path.len() + 1;
        let matches = depth <= want.len()
            && path.iter().zip(want).all(|(a, b)| a == b)
            && want[depth - 1] == seg;
        if matches && best.is_none_or(|(d, _)| depth > d) {
            best = Some((depth, line));
        }
    };
    // After a node: its mapping expects the next key (or, after a key that was a collection,
    // its value); its sequence the next item.
    let advance = |frames: &mut Vec<Frame>| match frames.last_mut() {
        Some(Frame::Map(key @ Some(_))) => *key = None,
        Some(Frame::Map(key @ None)) => *key = Some(String::new()),
        Some(Frame::Seq(i)) => *i += 1,
        None => {}
    };
    for event in Parser::new_from_str(text) {
        let (event, span) = event.ok()?;
        let line = span.start.line();
        let collection = matches!(event, Event::SequenceStart(..) | Event::MappingStart(..));
        match event {
            Event::Scalar(..)
            | Event::Alias(..)
            | Event::SequenceStart(..)
            | Event::MappingStart(..) => {
                // What this node is to the collection it is in.
                let seg = match frames.last_mut() {
                    Some(Frame::Map(key @ None)) => {
                        if let Event::Scalar(k, ..) = &event {
                            record(&path, k, line);
                            *key = Some(k.to_string());
                            continue;
                        }
                        // A key that is itself a collection: nothing to locate under it.
                        Some(String::new())
                    }
                    Some(Frame::Map(Some(k))) => Some(k.clone()),
                    Some(Frame::Seq(i)) => {
                        let seg = i.to_string();
                        record(&path, &seg, line);
                        Some(seg)
                    }
                    None => None,
                };
                if collection {
                    path.extend(seg);
                    frames.push(if matches!(event, Event::MappingStart(..)) {
                        Frame::Map(None)
                    } else {
                        Frame::Seq(0)
                    });
                } else {
                    advance(&mut frames);
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                frames.pop();
                if !frames.is_empty() {
                    path.pop();
                }
                advance(&mut frames);
            }
            Event::StreamEnd => return Some(best.map(|(_, l)| l)),
            _ => {}
        }
    }
    Some(best.map(|(_, l)| l))
}

/// The 1-based line of a block-style key path (list items are located at their list's key),
/// or of its deepest ancestor present.
fn find_line_by_indent(text: &str, path: &[&str]) -> Option<usize> {
    // List indices (`acl[2]`) are not located; their list's key is.
    let stripped: Vec<&str> = path
        .iter()
        .map(|p| p.split('[').next().unwrap_or(p))
        .collect();
    let path = &stripped[..];
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut best: Option<(usize, usize)> = None;
    for (no, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        let key = key.trim().trim_matches(['"', '\'']);
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, key.to_owned()));
        let depth = stack.len();
        if depth <= path.len() && stack.iter().zip(path).all(|((_, k), p)| k == p) {
            if depth == path.len() {
                return Some(no + 1);
            }
            if best.is_none_or(|(d, _)| depth > d) {
                best = Some((depth, no + 1));
            }
        }
    }
    best.map(|(_, l)| l)
}
