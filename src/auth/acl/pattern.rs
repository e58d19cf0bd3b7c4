//! The ACL's pattern language: globs (Go's `path.Match` plus `**`), anchored `/regex/`
//! patterns and `${...}` placeholders, parsed once into pieces that a request's facts fill in.
//! The language itself is documented in the parent module.

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use regex::Regex;

/// A request field a pattern is matched against, and that `${FIELD:N}` refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Account,
    Type,
    Name,
    Service,
}

impl Field {
    pub(super) const ALL: [Field; 4] = [Field::Account, Field::Type, Field::Name, Field::Service];

    pub(super) fn key(self) -> &'static str {
        match self {
            Field::Account => "account",
            Field::Type => "type",
            Field::Name => "name",
            Field::Service => "service",
        }
    }

    pub(super) fn parse(s: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.key() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Var {
    Field(Field),
    Label(String),
    Capture(Field, usize),
}

/// A parsed pattern: regex source fragments (a glob already translated) and placeholders.
#[derive(Debug, Clone)]
pub(super) enum Piece {
    Regex(String),
    Var(Var),
}

#[derive(Debug)]
pub(super) enum Pattern {
    /// No placeholder: compiled once.
    Static { regex: Regex, regex_mode: bool },
    /// Rendered and compiled per evaluation, with the placeholders' values escaped.
    Dynamic(Vec<Piece>),
}

impl Pattern {
    pub(super) fn compile(src: &str) -> Result<Pattern, String> {
        let regex_mode = src.len() > 2 && src.starts_with('/') && src.ends_with('/');
        let pieces = if regex_mode {
            parse_regex(&src[1..src.len() - 1])?
        } else {
            parse_glob(src)?
        };
        let vars = pieces.iter().any(|p| matches!(p, Piece::Var(_)));
        // Check the body alone first, so that `/a)|(b/` is refused rather than escaping the
        // anchoring group; with placeholders, check it with a stand-in for each value.
        let body = render(&pieces, |_| "(?:x)".to_owned());
        let checked = Regex::new(&body).and_then(|_| anchored(&body));
        let regex = checked.map_err(|e| {
            // A syntax error is several lines (the pattern, a caret, the error): keep the error.
            let e = e.to_string();
            let e = e.lines().last().unwrap_or_default().trim();
            let e = e.strip_prefix("error: ").unwrap_or(e);
            let what = if regex_mode { "regex" } else { "pattern" };
            format!("invalid {what} {src:?}: {e}")
        })?;
        Ok(if vars {
            Pattern::Dynamic(pieces)
        } else {
            Pattern::Static { regex, regex_mode }
        })
    }

    pub(super) fn vars(&self) -> impl Iterator<Item = &Var> {
        let pieces = match self {
            Pattern::Static { .. } => &[][..],
            Pattern::Dynamic(pieces) => &pieces[..],
        };
        pieces.iter().filter_map(|p| match p {
            Piece::Var(v) => Some(v),
            Piece::Regex(_) => None,
        })
    }
}

/// A standalone name pattern in the ACL's syntax (glob with `*`, `**`, `?`, classes, or an
/// anchored `/regex/`), without placeholders: used by the upstream allow-list so that both
/// speak one pattern language.
#[derive(Debug)]
pub struct NamePattern {
    regex: Regex,
}

impl NamePattern {
    pub fn compile(src: &str) -> Result<Self, String> {
        match Pattern::compile(src)? {
            Pattern::Static { regex, .. } => Ok(NamePattern { regex }),
            Pattern::Dynamic(_) => Err(format!("{src:?}: placeholders are not allowed here")),
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        self.regex.is_match(name)
    }
}

pub(super) fn anchored(body: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!(r"\A(?:{body})\z"))
}

pub(super) fn render(pieces: &[Piece], mut value: impl FnMut(&Var) -> String) -> String {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Regex(s) => out.push_str(s),
            Piece::Var(v) => out.push_str(&value(v)),
        }
    }
    out
}

/// `chars[i..]` starts with `${`: parse the placeholder, returning it and the index after `}`.
pub(super) fn parse_placeholder(chars: &[char], i: usize) -> Result<(Var, usize), String> {
    let rest = &chars[i + 2..];
    let Some(len) = rest.iter().position(|&c| c == '}') else {
        let text: String = chars[i..].iter().collect();
        return Err(format!("unterminated placeholder {text:?}"));
    };
    let inner: String = rest[..len].iter().collect();
    let unknown = || {
        format!(
            "unknown placeholder \"${{{inner}}}\" (known: ${{account}}, ${{type}}, ${{name}}, \
             ${{service}}, ${{labels:KEY}}, ${{FIELD:N}})"
        )
    };
    let var = if let Some(field) = Field::parse(&inner) {
        Var::Field(field)
    } else if let Some(key) = inner.strip_prefix("labels:") {
        if key.is_empty() {
            return Err(unknown());
        }
        Var::Label(key.to_owned())
    } else if let Some((field, n)) = inner.split_once(':')
        && let Some(field) = Field::parse(field)
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
    {
        match n.parse::<usize>() {
            Ok(n) if n >= 1 => Var::Capture(field, n),
            _ => return Err(format!("\"${{{inner}}}\": capture groups count from 1")),
        }
    } else {
        return Err(unknown());
    };
    Ok((var, i + 2 + len + 1))
}

pub(super) fn flush(pieces: &mut Vec<Piece>, frag: &mut String) {
    if !frag.is_empty() {
        pieces.push(Piece::Regex(std::mem::take(frag)));
    }
}

/// `chars` as pieces: each placeholder (`${…}`) a variable, and between them the regex source
/// `translate` makes of the rest, one token at a time (it returns the index after the token).
fn pieces(
    chars: &[char],
    mut translate: impl FnMut(usize, &mut String) -> Result<usize, String>,
) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut frag = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '$' && chars.get(i + 1) == Some(&'{') {
            let (var, next) = parse_placeholder(chars, i)?;
            flush(&mut pieces, &mut frag);
            pieces.push(Piece::Var(var));
            i = next;
        } else {
            i = translate(i, &mut frag)?;
        }
    }
    flush(&mut pieces, &mut frag);
    Ok(pieces)
}

/// A `/regex/` body: the text is regex source, apart from placeholders (`\$` escapes one).
pub(super) fn parse_regex(body: &str) -> Result<Vec<Piece>, String> {
    let chars: Vec<char> = body.chars().collect();
    pieces(&chars, |i, frag| {
        Ok(match chars[i] {
            '\\' => {
                frag.extend(&chars[i..(i + 2).min(chars.len())]);
                i + 2
            }
            c => {
                frag.push(c);
                i + 1
            }
        })
    })
}

pub(super) fn push_literal(frag: &mut String, c: char) {
    let mut buf = [0u8; 4];
    frag.push_str(&regex::escape(c.encode_utf8(&mut buf)));
}

/// A glob, translated to regex source.
pub(super) fn parse_glob(src: &str) -> Result<Vec<Piece>, String> {
    let chars: Vec<char> = src.chars().collect();
    pieces(&chars, |i, frag| {
        Ok(match chars[i] {
            '*' => {
                let run = chars[i..].iter().take_while(|&&c| c == '*').count();
                frag.push_str(if run == 1 { "[^/]*" } else { "(?s:.*)" });
                i + run
            }
            '?' => {
                frag.push_str("[^/]");
                i + 1
            }
            '[' => parse_class(&chars, i, frag)?,
            '\\' => {
                let Some(&c) = chars.get(i + 1) else {
                    return Err(format!("pattern {src:?} ends with a lone backslash"));
                };
                push_literal(frag, c);
                i + 2
            }
            c => {
                push_literal(frag, c);
                i + 1
            }
        })
    })
}

/// `chars[i]` is `[`: translate the class (Go `path.Match` syntax) and return the index after it.
pub(super) fn parse_class(chars: &[char], i: usize, out: &mut String) -> Result<usize, String> {
    let text = || chars[i..].iter().collect::<String>();
    let mut j = i + 1;
    let negated = chars.get(j) == Some(&'^');
    if negated {
        j += 1;
    }
    out.push('[');
    if negated {
        out.push('^');
    }
    let mut items = 0;
    // One character of the class: `\c`, or any character but `-` and `]`.
    let one = |j: usize| -> Result<(char, usize), String> {
        match chars.get(j) {
            None => Err(format!("unterminated character class in {:?}", text())),
            Some('\\') => match chars.get(j + 1) {
                Some(&c) => Ok((c, j + 2)),
                None => Err(format!("unterminated character class in {:?}", text())),
            },
            Some(']') if items_is_zero(chars, i, j) => {
                Err(format!("empty character class in {:?}", text()))
            }
            Some(c @ ('-' | ']')) => Err(format!(
                "unescaped {c:?} in character class in {:?} (escape it with a backslash)",
                text()
            )),
            Some(&c) => Ok((c, j + 1)),
        }
    };
    loop {
        if items > 0 && chars.get(j) == Some(&']') {
            j += 1;
            break;
        }
        let (lo, next) = one(j)?;
        j = next;
        if chars.get(j) == Some(&'-') {
            let (hi, next) = one(j + 1)?;
            j = next;
            if lo > hi {
                return Err(format!("character range {lo}-{hi} is out of order"));
            }
            let _ = write!(out, "\\x{{{:X}}}-\\x{{{:X}}}", lo as u32, hi as u32);
        } else {
            let _ = write!(out, "\\x{{{:X}}}", lo as u32);
        }
        items += 1;
    }
    if negated {
        out.push('/');
    }
    out.push(']');
    Ok(j)
}

/// Whether position `j` is the first item of the class opened at `i` (after an optional `^`).
pub(super) fn items_is_zero(chars: &[char], i: usize, j: usize) -> bool {
    j == i + 1 || (j == i + 2 && chars[i + 1] == '^')
}

pub(super) fn parse_ip(s: &str) -> Result<IpNet, String> {
    let net = match s.parse::<IpAddr>() {
        Ok(ip) => IpNet::from(ip),
        Err(_) => s.parse::<IpNet>().map_err(|_| {
            format!("{s:?} is neither an IP address nor a CIDR prefix (like 10.0.0.0/8, fd00::/8)")
        })?,
    };
    // `::ffff:a.b.c.d/n` (n >= 96) is an IPv4 prefix, as client addresses are compared as IPv4.
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
    {
        return Ok(IpNet::V4(
            Ipv4Net::new(v4, v6.prefix_len() - 96).expect("prefix is at most 32"),
        ));
    }
    Ok(net)
}
