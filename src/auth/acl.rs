//! Authorization: an ordered access-control list with docker_auth's semantics, so that the `acl:`
//! section of a docker_auth `auth_config.yml` can be pasted in as it is.
//!
//! ```yaml
//! acl:
//!   - match: {account: "admin"}
//!     actions: ["*"]
//!     comment: "Admin has full access to everything."
//!   - match: {account: "", name: "myorg/**"}         # the anonymous user
//!     actions: ["pull"]
//!   - match: {account: "/.+/", name: "${account}/*"} # any logged-in user, own namespace
//!     actions: ["*"]
//!   - match: {ip: "10.0.0.0/8", type: "repository"}
//!     actions: ["pull"]
//!   - match: {labels: {"group": "admins"}}
//!     actions: ["*"]
//!   - match: {name: "${labels:project}/*"}
//!     actions: ["push", "pull"]
//!   - match: {service: "registry.example.com"}
//!     actions: []                                    # a deny rule
//! ```
//!
//! # Evaluation
//!
//! Rules are tried in order; the **first** rule whose conditions all hold decides, and rules
//! below it are not looked at. The access granted is the requested actions that the rule allows,
//! in the order they were requested; `*` among a rule's actions allows every requested action
//! (including a requested `*`, which is granted only then). A matching rule with `actions: []`
//! therefore denies. When no rule matches, nothing is granted.
//!
//! # Conditions
//!
//! An absent condition holds for everyone; `match: {}` matches every request.
//! - `account`: the authenticated account; the anonymous user is `""`, so `account: ""` matches
//!   only anonymous requests and `account: "/.+/"` only authenticated ones.
//! - `type`, `name`: the requested resource (`repository`, `myorg/app`).
//! - `service`: the `service` the token is requested for.
//! - `ip`: the client's address, as a single address or a CIDR prefix, IPv4 or IPv6. An
//!   IPv4-mapped IPv6 client address (`::ffff:10.1.2.3`, seen on dual-stack sockets) is matched as
//!   the IPv4 address, as docker_auth (Go's `net.IPNet`) does.
//! - `labels`: a map from label key to pattern; every listed key must be among the identity's
//!   labels with at least one value matching its pattern.
//!
//! # Patterns
//!
//! Every condition but `ip` is a pattern matched against the **whole** value:
//! - `/regex/` (wrapped in slashes, longer than two characters) is a regular expression (Rust
//!   `regex` syntax), anchored at both ends.
//! - Anything else is a glob, as Go's `path.Match` (used by docker_auth): `*` matches any run of
//!   characters other than `/` (so `myorg/*` matches `myorg/app` but not `myorg/team/app`), `?`
//!   one character other than `/`, `[abc]`, `[a-z]`, `[^a-z]` one character from a class (a
//!   negated class never matches `/`), and `\c` the character `c`. Everything else is literal.
//! - **Our addition:** in a glob, `**` matches any run of characters *including* `/`, so
//!   `myorg/**` matches `myorg/app` and `myorg/team/app` (but not `myorg` itself).
//!
//! # Placeholders
//!
//! Before matching, placeholders in a pattern are replaced with facts of the request:
//! `${account}`, `${type}`, `${name}`, `${service}`, `${labels:KEY}`, and `${FIELD:N}`, the `N`th
//! capture group of the `/regex/` of the condition `FIELD` (one of `account`, `type`, `name`,
//! `service`) matched against its value: with `account: "/(.+)@example\.com/"`, `name:
//! "${account:1}/*"` gives `john` the namespace `john/`. Substituted values are data, never
//! pattern syntax: an account `a*` in `${account}/*` matches only the literal `a*/…`. A label may
//! have several values: the condition holds if it holds for **any** of them (for any combination
//! when several label placeholders are used), and never for a label the identity lacks. To write
//! a literal `${`, escape the dollar: `\${` in a glob, `\$\{` in a regex.
//!
//! # Differences from docker_auth
//!
//! - `/regex/` is anchored to the whole value; docker_auth searches anywhere in it (its `/z$/`
//!   matches `baz`, ours does not). Mind this in **deny** rules: docker_auth's `/secret/` denies
//!   every name containing `secret`, ours only `secret`; write `/.*secret.*/`.
//! - `**` in a glob (see above).
//! - `*` anywhere among a rule's actions allows everything; docker_auth only for exactly `["*"]`.
//! - Label values are escaped when substituted (docker_auth escapes `${account}` and friends but
//!   not label values), and a placeholder for a label the identity lacks makes the condition fail
//!   (docker_auth then matches the pattern with the placeholder left in as text).
//! - Unknown placeholders, malformed globs, and `${FIELD:N}` with no such group or no `/regex/`
//!   in `FIELD` are errors at load time; docker_auth ignores them and matches as it can.
//! - `match` and `actions` are required keys (docker_auth crashes without them).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::{Identity, RequestInfo, ResourceActions};

/// One rule of the `acl:` list, in docker_auth's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclEntry {
    #[serde(rename = "match")]
    pub r#match: MatchConditions,
    /// Actions allowed when the rule matches; `["*"]` allows everything, `[]` denies.
    pub actions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// The conditions of a rule; all must hold. See the module documentation for the pattern syntax.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConditions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A single IP address or a CIDR prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A problem with one entry of the list; [`Acl::compile`] reports all of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("acl[{index}].{field}: {message}")]
pub struct AclError {
    /// Position of the entry in the list, from 0.
    pub index: usize,
    /// The offending field: `match.name`, `match.labels.group`, `match.ip`, `actions`…
    pub field: String,
    pub message: String,
}

/// The outcome of [`Acl::evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Index of the rule that matched, if any.
    pub rule: Option<usize>,
    /// The actions granted (empty when denied).
    pub granted: Vec<String>,
}

/// A compiled access-control list: patterns are parsed and, where they contain no placeholder,
/// compiled once. An empty list denies everything.
#[derive(Debug, Default)]
pub struct Acl {
    rules: Vec<Rule>,
}

impl Acl {
    /// Compile the entries, reporting every bad entry (and every bad field of it) at once.
    pub fn compile(entries: &[AclEntry]) -> Result<Acl, Vec<AclError>> {
        let mut errors = Vec::new();
        let mut rules = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            if let Some(rule) = Rule::compile(index, entry, &mut errors) {
                rules.push(rule);
            }
        }
        if errors.is_empty() {
            Ok(Acl { rules })
        } else {
            Err(errors)
        }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The comment of rule `index`, for logging a [`Decision`].
    pub fn comment(&self, index: usize) -> Option<&str> {
        self.rules.get(index)?.comment.as_deref()
    }

    /// The actions of `requested` that `id` may perform: see the module documentation.
    pub fn authorize(
        &self,
        id: &Identity,
        req: &RequestInfo,
        requested: &ResourceActions,
    ) -> Vec<String> {
        self.evaluate(id, req, requested).granted
    }

    /// Like [`Acl::authorize`] for a resource known by several names (a repository's
    /// [`super::RepositoryNames`]): a rule's conditions hold when they hold for any of them, so
    /// a rule naming either form decides for the repository and neither form steps around it.
    /// Rules are still tried in order; the first that holds for some name decides.
    pub fn authorize_as(
        &self,
        id: &Identity,
        req: &RequestInfo,
        requested: &ResourceActions,
        names: &[String],
    ) -> Vec<String> {
        let forms: Vec<ResourceActions> = names
            .iter()
            .map(|n| ResourceActions {
                name: n.clone(),
                ..requested.clone()
            })
            .collect();
        for rule in &self.rules {
            if forms.iter().any(|f| {
                rule.matches(&Ctx {
                    id,
                    req,
                    requested: f,
                })
            }) {
                return rule.grant(&requested.actions);
            }
        }
        Vec::new()
    }

    /// Like [`Acl::authorize`], also telling which rule decided.
    pub fn evaluate(
        &self,
        id: &Identity,
        req: &RequestInfo,
        requested: &ResourceActions,
    ) -> Decision {
        let ctx = Ctx { id, req, requested };
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.matches(&ctx) {
                return Decision {
                    rule: Some(index),
                    granted: rule.grant(&requested.actions),
                };
            }
        }
        Decision {
            rule: None,
            granted: Vec::new(),
        }
    }
}

/// Above this many label combinations to try for one pattern (a label placeholder used twice,
/// with many values), the condition is taken not to hold rather than burn CPU per request.
const MAX_COMBINATIONS: usize = 256;

/// A request field a pattern is matched against, and that `${FIELD:N}` refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Account,
    Type,
    Name,
    Service,
}

impl Field {
    const ALL: [Field; 4] = [Field::Account, Field::Type, Field::Name, Field::Service];

    fn key(self) -> &'static str {
        match self {
            Field::Account => "account",
            Field::Type => "type",
            Field::Name => "name",
            Field::Service => "service",
        }
    }

    fn parse(s: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.key() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    Field(Field),
    Label(String),
    Capture(Field, usize),
}

/// A parsed pattern: regex source fragments (a glob already translated) and placeholders.
#[derive(Debug, Clone)]
enum Piece {
    Regex(String),
    Var(Var),
}

#[derive(Debug)]
enum Pattern {
    /// No placeholder: compiled once.
    Static { regex: Regex, regex_mode: bool },
    /// Rendered and compiled per evaluation, with the placeholders' values escaped.
    Dynamic(Vec<Piece>),
}

impl Pattern {
    fn compile(src: &str) -> Result<Pattern, String> {
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

    fn vars(&self) -> impl Iterator<Item = &Var> {
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

fn anchored(body: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!(r"\A(?:{body})\z"))
}

fn render(pieces: &[Piece], mut value: impl FnMut(&Var) -> String) -> String {
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
fn parse_placeholder(chars: &[char], i: usize) -> Result<(Var, usize), String> {
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

fn flush(pieces: &mut Vec<Piece>, frag: &mut String) {
    if !frag.is_empty() {
        pieces.push(Piece::Regex(std::mem::take(frag)));
    }
}

/// A `/regex/` body: the text is regex source, apart from placeholders (`\$` escapes one).
fn parse_regex(body: &str) -> Result<Vec<Piece>, String> {
    let chars: Vec<char> = body.chars().collect();
    let mut pieces = Vec::new();
    let mut frag = String::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                frag.extend(&chars[i..(i + 2).min(chars.len())]);
                i += 2;
            }
            '$' if chars.get(i + 1) == Some(&'{') => {
                let (var, next) = parse_placeholder(&chars, i)?;
                flush(&mut pieces, &mut frag);
                pieces.push(Piece::Var(var));
                i = next;
            }
            c => {
                frag.push(c);
                i += 1;
            }
        }
    }
    flush(&mut pieces, &mut frag);
    Ok(pieces)
}

fn push_literal(frag: &mut String, c: char) {
    let mut buf = [0u8; 4];
    frag.push_str(&regex::escape(c.encode_utf8(&mut buf)));
}

/// A glob, translated to regex source.
fn parse_glob(src: &str) -> Result<Vec<Piece>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut pieces = Vec::new();
    let mut frag = String::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => {
                let run = chars[i..].iter().take_while(|&&c| c == '*').count();
                frag.push_str(if run == 1 { "[^/]*" } else { "(?s:.*)" });
                i += run;
            }
            '?' => {
                frag.push_str("[^/]");
                i += 1;
            }
            '[' => {
                i = parse_class(&chars, i, &mut frag)?;
            }
            '\\' => {
                let Some(&c) = chars.get(i + 1) else {
                    return Err(format!("pattern {src:?} ends with a lone backslash"));
                };
                push_literal(&mut frag, c);
                i += 2;
            }
            '$' if chars.get(i + 1) == Some(&'{') => {
                let (var, next) = parse_placeholder(&chars, i)?;
                flush(&mut pieces, &mut frag);
                pieces.push(Piece::Var(var));
                i = next;
            }
            c => {
                push_literal(&mut frag, c);
                i += 1;
            }
        }
    }
    flush(&mut pieces, &mut frag);
    Ok(pieces)
}

/// `chars[i]` is `[`: translate the class (Go `path.Match` syntax) and return the index after it.
fn parse_class(chars: &[char], i: usize, out: &mut String) -> Result<usize, String> {
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
fn items_is_zero(chars: &[char], i: usize, j: usize) -> bool {
    j == i + 1 || (j == i + 2 && chars[i + 1] == '^')
}

fn parse_ip(s: &str) -> Result<IpNet, String> {
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

struct Ctx<'a> {
    id: &'a Identity,
    req: &'a RequestInfo,
    requested: &'a ResourceActions,
}

impl<'a> Ctx<'a> {
    fn value(&self, field: Field) -> &'a str {
        match field {
            Field::Account => &self.id.account,
            Field::Type => &self.requested.kind,
            Field::Name => &self.requested.name,
            Field::Service => &self.req.service,
        }
    }
}

#[derive(Debug)]
struct Rule {
    /// Indexed like [`Field::ALL`].
    fields: [Option<Pattern>; 4],
    ip: Option<IpNet>,
    labels: Vec<(String, Pattern)>,
    actions: Vec<String>,
    allow_all: bool,
    comment: Option<String>,
}

impl Rule {
    fn compile(index: usize, entry: &AclEntry, errors: &mut Vec<AclError>) -> Option<Rule> {
        let before = errors.len();
        let mut error = |field: String, message: String| {
            errors.push(AclError {
                index,
                field,
                message,
            })
        };
        let m = &entry.r#match;
        let sources = [&m.account, &m.kind, &m.name, &m.service];
        let mut fields: [Option<Pattern>; 4] = Default::default();
        // Fields present but invalid, so that a `${FIELD:N}` into them is not reported again.
        let mut invalid = [false; 4];
        for (k, src) in sources.into_iter().enumerate() {
            if let Some(src) = src {
                match Pattern::compile(src) {
                    Ok(p) => fields[k] = Some(p),
                    Err(e) => {
                        invalid[k] = true;
                        error(format!("match.{}", Field::ALL[k].key()), e);
                    }
                }
            }
        }
        let mut labels = Vec::new();
        for (key, src) in &m.labels {
            match Pattern::compile(src) {
                Ok(p) => labels.push((key.clone(), p)),
                Err(e) => error(format!("match.labels.{key}"), e),
            }
        }
        let ip = match m.ip.as_deref().map(parse_ip) {
            Some(Err(e)) => {
                error("match.ip".into(), e);
                None
            }
            Some(Ok(net)) => Some(net),
            None => None,
        };
        // `${FIELD:N}` needs FIELD to be a placeholder-free /regex/ with at least N groups.
        let users = Field::ALL
            .iter()
            .zip(&fields)
            .filter_map(|(f, p)| Some((format!("match.{}", f.key()), p.as_ref()?)))
            .chain(labels.iter().map(|(k, p)| (format!("match.labels.{k}"), p)));
        for (at, pattern) in users {
            for var in pattern.vars() {
                let &Var::Capture(target, n) = var else {
                    continue;
                };
                let k = target as usize;
                if invalid[k] {
                    continue;
                }
                let name = target.key();
                let problem = match &fields[k] {
                    Some(Pattern::Static {
                        regex,
                        regex_mode: true,
                    }) => {
                        // The anchoring adds no group; `captures_len` counts group 0.
                        let groups = regex.captures_len() - 1;
                        (n > groups).then(|| {
                            format!(
                                "\"${{{name}:{n}}}\" refers to capture group {n} of match.{name}, \
                                 which has {groups}"
                            )
                        })
                    }
                    _ => Some(format!(
                        "\"${{{name}:{n}}}\" needs match.{name} to be a /regex/ without \
                         placeholders"
                    )),
                };
                if let Some(message) = problem {
                    error(at.clone(), message);
                }
            }
        }
        for action in &entry.actions {
            if action.is_empty() {
                error("actions".into(), "an action is the empty string".into());
            }
        }
        if errors.len() > before {
            return None;
        }
        Some(Rule {
            fields,
            ip,
            labels,
            allow_all: entry.actions.iter().any(|a| a == "*"),
            actions: entry.actions.clone(),
            comment: entry.comment.clone(),
        })
    }

    fn matches(&self, ctx: &Ctx<'_>) -> bool {
        if let Some(net) = &self.ip
            && !net.contains(&ctx.req.ip.to_canonical())
        {
            return false;
        }
        let fields = || {
            Field::ALL
                .into_iter()
                .zip(&self.fields)
                .filter_map(|(f, p)| Some((f, p.as_ref()?)))
        };
        let field_holds = |(f, p): (Field, &Pattern)| {
            let value = ctx.value(f);
            self.pattern_holds(p, ctx, &|re| re.is_match(value))
        };
        let label_holds = |(key, p): &(String, Pattern)| match ctx.id.labels.get(key) {
            Some(values) => self.pattern_holds(p, ctx, &|re| values.iter().any(|v| re.is_match(v))),
            None => false,
        };
        // Cheap conditions first: the ones compiled once.
        let is_static = |p: &Pattern| matches!(p, Pattern::Static { .. });
        fields().filter(|(_, p)| is_static(p)).all(field_holds)
            && self
                .labels
                .iter()
                .filter(|(_, p)| is_static(p))
                .all(label_holds)
            && fields().filter(|(_, p)| !is_static(p)).all(field_holds)
            && self
                .labels
                .iter()
                .filter(|(_, p)| !is_static(p))
                .all(label_holds)
    }

    /// The values a placeholder stands for; `None` when it has none (a missing label, a capture
    /// from a field that does not match).
    fn resolve<'a>(&self, var: &Var, ctx: &Ctx<'a>) -> Option<Vec<&'a str>> {
        match var {
            Var::Field(f) => Some(vec![ctx.value(*f)]),
            Var::Label(key) => {
                let values = ctx.id.labels.get(key)?;
                (!values.is_empty()).then(|| values.iter().map(String::as_str).collect())
            }
            Var::Capture(f, n) => {
                let Some(Pattern::Static { regex, .. }) = &self.fields[*f as usize] else {
                    return None;
                };
                let caps = regex.captures(ctx.value(*f))?;
                Some(vec![caps.get(*n).map_or("", |m| m.as_str())])
            }
        }
    }

    /// Whether `test` accepts the pattern's regex, or, with placeholders, any of its renderings.
    fn pattern_holds(
        &self,
        pattern: &Pattern,
        ctx: &Ctx<'_>,
        test: &dyn Fn(&Regex) -> bool,
    ) -> bool {
        let pieces = match pattern {
            Pattern::Static { regex, .. } => return test(regex),
            Pattern::Dynamic(pieces) => pieces,
        };
        // Distinct placeholders, their values, how often each occurs.
        let mut vars: Vec<(&Var, Vec<&str>, usize)> = Vec::new();
        for piece in pieces {
            let Piece::Var(var) = piece else { continue };
            if let Some(seen) = vars.iter_mut().find(|(v, _, _)| *v == var) {
                seen.2 += 1;
            } else {
                match self.resolve(var, ctx) {
                    Some(values) => vars.push((var, values, 1)),
                    None => return false,
                }
            }
        }
        // A multi-valued placeholder used once becomes an alternation of its values; one used
        // several times must take the same value everywhere, so its values are enumerated.
        let enumerated: Vec<usize> = (0..vars.len())
            .filter(|&k| vars[k].1.len() > 1 && vars[k].2 > 1)
            .collect();
        let combinations = enumerated
            .iter()
            .try_fold(1usize, |acc, &k| acc.checked_mul(vars[k].1.len()))
            .unwrap_or(usize::MAX);
        if combinations > MAX_COMBINATIONS {
            tracing::warn!(
                combinations,
                "acl: too many label combinations to try for one pattern; taking it as not matching"
            );
            return false;
        }
        let mut choice: Vec<Option<usize>> = vec![None; vars.len()];
        for combination in 0..combinations {
            let mut rest = combination;
            for &k in &enumerated {
                let n = vars[k].1.len();
                choice[k] = Some(rest % n);
                rest /= n;
            }
            let body = render(pieces, |var| {
                let k = vars
                    .iter()
                    .position(|(v, _, _)| *v == var)
                    .expect("every placeholder was resolved");
                let values = &vars[k].1;
                let alternatives: Vec<String> = match choice[k] {
                    Some(c) => vec![regex::escape(values[c])],
                    None => values.iter().map(|v| regex::escape(v)).collect(),
                };
                format!("(?:{})", alternatives.join("|"))
            });
            match anchored(&body) {
                Ok(re) if test(&re) => return true,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "acl: a pattern with its values substituted does not compile");
                    return false;
                }
            }
        }
        false
    }

    fn grant(&self, requested: &[String]) -> Vec<String> {
        let mut granted: Vec<String> = Vec::new();
        for action in requested {
            if (self.allow_all || self.actions.contains(action)) && !granted.contains(action) {
                granted.push(action.clone());
            }
        }
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(yaml: &str) -> Acl {
        let entries: Vec<AclEntry> = serde_saphyr::from_str(yaml).expect("test ACL parses");
        Acl::compile(&entries).unwrap_or_else(|e| panic!("test ACL compiles: {e:?}"))
    }

    fn errors(yaml: &str) -> Vec<AclError> {
        let entries: Vec<AclEntry> = serde_saphyr::from_str(yaml).expect("test ACL parses");
        Acl::compile(&entries).expect_err("test ACL must not compile")
    }

    /// Who asks: account, labels, client IP, service.
    struct Who<'a> {
        account: &'a str,
        labels: &'a [(&'a str, &'a [&'a str])],
        ip: &'a str,
        service: &'a str,
    }

    const SERVICE: &str = "registry.example.com";

    fn user(account: &str) -> Who<'_> {
        Who {
            account,
            labels: &[],
            ip: "192.0.2.1",
            service: SERVICE,
        }
    }

    fn labelled<'a>(account: &'a str, labels: &'a [(&'a str, &'a [&'a str])]) -> Who<'a> {
        Who {
            labels,
            ..user(account)
        }
    }

    fn from_ip(ip: &str) -> Who<'_> {
        Who {
            ip,
            ..user("alice")
        }
    }

    fn to_service(service: &str) -> Who<'_> {
        Who {
            service,
            ..user("alice")
        }
    }

    fn ask(acl: &Acl, who: &Who<'_>, scope: &str) -> Vec<String> {
        let id = Identity {
            account: who.account.to_owned(),
            labels: who
                .labels
                .iter()
                .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
                .collect(),
            valid_until: None,
        };
        let req = RequestInfo {
            ip: who.ip.parse().expect("test IP"),
            service: who.service.to_owned(),
        };
        let requested = ResourceActions::parse_scope(scope).expect("test scope");
        acl.authorize(&id, &req, &requested)
    }

    /// Run a table of (who, scope, expected grant) against one ACL.
    fn table(acl: &Acl, cases: &[(Who<'_>, &str, &[&str])]) {
        let mut failures = Vec::new();
        for (k, (who, scope, want)) in cases.iter().enumerate() {
            let got = ask(acl, who, scope);
            if got != *want {
                failures.push(format!(
                    "case {k}: account {:?} labels {:?} ip {} service {:?} scope {scope:?}: \
                     want {want:?}, got {got:?}",
                    who.account, who.labels, who.ip, who.service
                ));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    const NONE: &[&str] = &[];
    const PULL: &[&str] = &["pull"];
    const PUSH_PULL: &[&str] = &["push", "pull"];

    #[test]
    fn name_patterns_for_the_allow_list() {
        let p = NamePattern::compile("myorg/**").unwrap();
        assert!(p.matches("myorg/a"));
        assert!(p.matches("myorg/team/app"));
        assert!(!p.matches("other/a"));
        assert!(!p.matches("myorgx/a"));
        let p = NamePattern::compile("library/*").unwrap();
        assert!(p.matches("library/alpine"));
        assert!(!p.matches("library/a/b"));
        assert!(
            NamePattern::compile("/lib.*/")
                .unwrap()
                .matches("library/x")
        );
        assert!(NamePattern::compile("${account}/*").is_err());
        assert!(NamePattern::compile("/a)|(b/").is_err());
    }

    #[test]
    fn anonymous_may_only_pull_myorg() {
        let acl = acl(r#"
- match: {account: "", name: "myorg/**"}
  actions: ["pull"]
  comment: "anonymous"
"#);
        table(
            &acl,
            &[
                (user(""), "repository:myorg/app:pull", PULL),
                (user(""), "repository:myorg/team/app:push,pull", PULL),
                (user(""), "repository:myorg/app:push", NONE),
                (user(""), "repository:other/app:pull", NONE),
                (user(""), "repository:myorg:pull", NONE),
                (user(""), "repository:myorgx/app:pull", NONE),
                // `""` is the anonymous user only.
                (user("alice"), "repository:myorg/app:pull", NONE),
            ],
        );
    }

    #[test]
    fn nested_names_single_and_double_star() {
        let single = acl(r#"[{match: {name: "myorg/*"}, actions: ["pull"]}]"#);
        let double = acl(r#"[{match: {name: "myorg/**"}, actions: ["pull"]}]"#);
        let middle = acl(r#"[{match: {name: "myorg/*/app"}, actions: ["pull"]}]"#);
        let deep = acl(r#"[{match: {name: "myorg/**/app"}, actions: ["pull"]}]"#);
        let question = acl(r#"[{match: {name: "myorg/ap?"}, actions: ["pull"]}]"#);
        let class = acl(r#"[{match: {name: "myorg/app-[0-9a]"}, actions: ["pull"]}]"#);
        let negated = acl(r#"[{match: {name: "myorg[^x]app"}, actions: ["pull"]}]"#);
        let escaped = acl(r#"[{match: {name: "myorg/a\\*"}, actions: ["pull"]}]"#);
        let u = || user("alice");
        table(
            &single,
            &[
                (u(), "repository:myorg/app:pull", PULL),
                (u(), "repository:myorg/team/app:pull", NONE),
                (u(), "repository:myorg:pull", NONE),
            ],
        );
        table(
            &double,
            &[
                (u(), "repository:myorg/app:pull", PULL),
                (u(), "repository:myorg/team/app:pull", PULL),
                (u(), "repository:myorg/a/b/c/d:pull", PULL),
                (u(), "repository:myorg:pull", NONE),
                (u(), "repository:other/myorg/app:pull", NONE),
            ],
        );
        table(
            &middle,
            &[
                (u(), "repository:myorg/team/app:pull", PULL),
                (u(), "repository:myorg/a/b/app:pull", NONE),
            ],
        );
        table(
            &deep,
            &[
                (u(), "repository:myorg/team/app:pull", PULL),
                (u(), "repository:myorg/a/b/app:pull", PULL),
                (u(), "repository:myorg/a/b/app2:pull", NONE),
            ],
        );
        table(
            &question,
            &[
                (u(), "repository:myorg/app:pull", PULL),
                (u(), "repository:myorg/ap:pull", NONE),
                (u(), "repository:myorg/apps:pull", NONE),
                (u(), "repository:myorg/ap/:pull", NONE),
            ],
        );
        table(
            &class,
            &[
                (u(), "repository:myorg/app-7:pull", PULL),
                (u(), "repository:myorg/app-a:pull", PULL),
                (u(), "repository:myorg/app-b:pull", NONE),
            ],
        );
        table(
            &negated,
            &[
                (u(), "repository:myorg-app:pull", PULL),
                (u(), "repository:myorgxapp:pull", NONE),
                // A negated class never matches `/`.
                (u(), "repository:myorg/app:pull", NONE),
            ],
        );
        table(
            &escaped,
            &[
                (u(), "repository:myorg/a*:pull", PULL),
                (u(), "repository:myorg/ab:pull", NONE),
            ],
        );
        // Regex metacharacters in a glob are literal.
        let dots = acl(r#"[{match: {name: "my.org/(app)+"}, actions: ["pull"]}]"#);
        table(
            &dots,
            &[
                (u(), "repository:my.org/(app)+:pull", PULL),
                (u(), "repository:myxorg/app:pull", NONE),
                (u(), "repository:my.org/appapp:pull", NONE),
            ],
        );
    }

    #[test]
    fn account_substitution_is_escaped() {
        let glob = acl(r#"[{match: {account: "/.+/", name: "${account}/*"}, actions: ["*"]}]"#);
        table(
            &glob,
            &[
                (user("alice"), "repository:alice/app:push,pull", PUSH_PULL),
                (user("alice"), "repository:bob/app:pull", NONE),
                (user("alice"), "repository:alice/team/app:pull", NONE),
                (user("alice"), "repository:alicex/app:pull", NONE),
                // Anonymous fails `/.+/` even though `""/*` would be `/app`.
                (user(""), "repository:/app:pull", NONE),
                // Metacharacters in the account are data, not pattern syntax.
                (user("a*"), "repository:abc/app:pull", NONE),
                (user("a*"), "repository:a*/app:pull", PULL),
                (user("a**"), "repository:a/b/app:pull", NONE),
                (user("a?"), "repository:ab/app:pull", NONE),
                (user("[ab]"), "repository:a/app:pull", NONE),
                (user("[ab]"), "repository:[ab]/app:pull", PULL),
                (user("a.b"), "repository:axb/app:pull", NONE),
                (user("a.b"), "repository:a.b/app:pull", PULL),
            ],
        );
        let regex = acl(r#"[{match: {name: "/${account}_.*/"}, actions: ["pull"]}]"#);
        table(
            &regex,
            &[
                (user("foo"), "repository:foo_x:pull", PULL),
                (user("foo"), "repository:xfoo_x:pull", NONE),
                (user(".*"), "repository:foo_x:pull", NONE),
                (user("a|b"), "repository:b_x:pull", NONE),
                (user("a|b"), "repository:a|b_x:pull", PULL),
                (user("a)|(b"), "repository:b_x:pull", NONE),
            ],
        );
    }

    #[test]
    fn other_request_placeholders() {
        let acl = acl(r#"
- match: {name: "${service}/*"}
  actions: ["pull"]
- match: {name: "/${type}-.+/"}
  actions: ["push"]
- match: {labels: {self: "${account}"}}
  actions: ["*"]
"#);
        table(
            &acl,
            &[
                (user("a"), "repository:registry.example.com/x:pull", PULL),
                (user("a"), "repository:registryxexample.com/x:pull", NONE),
                (user("a"), "repository:repository-x:push,pull", &["push"]),
                (user("a"), "repository:registry-x:push,pull", NONE),
                (
                    labelled("bob", &[("self", &["x", "bob"])]),
                    "repository:z:pull",
                    PULL,
                ),
                (
                    labelled("bob", &[("self", &["alice"])]),
                    "repository:z:pull",
                    NONE,
                ),
            ],
        );
    }

    #[test]
    fn capture_groups_of_another_field() {
        let acl = acl(r#"
- match: {account: "/(.+)@test\\.com/", name: "${account:1}/*"}
  actions: ["*"]
- match: {account: "/(.+)@(.+?)\\.corp\\.com/", name: "${account:1}-${account:2}/*"}
  actions: ["pull"]
"#);
        table(
            &acl,
            &[
                (
                    user("john.smith@test.com"),
                    "repository:john.smith/x:push",
                    &["push"],
                ),
                (
                    user("john.smith@test.com"),
                    "repository:johnxsmith/x:push",
                    NONE,
                ),
                (user("john@test.com"), "repository:jane/x:push", NONE),
                (
                    user("john@it.corp.com"),
                    "repository:john-it/x:push,pull",
                    PULL,
                ),
                (user("john@it.corp.com"), "repository:john-hr/x:pull", NONE),
                (user("john"), "repository:john/x:pull", NONE),
            ],
        );
    }

    #[test]
    fn multi_valued_label_placeholders() {
        let one = acl(r#"[{match: {name: "${labels:project}/*"}, actions: ["push", "pull"]}]"#);
        let alice: &[(&str, &[&str])] =
            &[("project", &["website", "api"]), ("tier", &["fe", "be"])];
        table(
            &one,
            &[
                (
                    labelled("alice", alice),
                    "repository:website/x:push",
                    &["push"],
                ),
                (labelled("alice", alice), "repository:api/x:pull", PULL),
                (labelled("alice", alice), "repository:other/x:pull", NONE),
                (
                    labelled("alice", alice),
                    "repository:website/a/b:pull",
                    NONE,
                ),
                // No such label, or no values: no match (not a literal `${labels:project}`).
                (user("alice"), "repository:website/x:pull", NONE),
                (
                    labelled("alice", &[("project", &[])]),
                    "repository:website/x:pull",
                    NONE,
                ),
                // …even where an empty substitution would match.
                (
                    labelled("alice", &[("project", &[])]),
                    "repository:/x:pull",
                    NONE,
                ),
                // Label values are data too.
                (
                    labelled("alice", &[("project", &["a*"])]),
                    "repository:abc/x:pull",
                    NONE,
                ),
                (
                    labelled("alice", &[("project", &["a.b"])]),
                    "repository:axb/x:pull",
                    NONE,
                ),
                (
                    labelled("alice", &[("project", &["a.b"])]),
                    "repository:a.b/x:pull",
                    PULL,
                ),
            ],
        );
        // Every combination of several placeholders is tried.
        let two =
            acl(r#"[{match: {name: "${labels:project}/${labels:tier}"}, actions: ["pull"]}]"#);
        table(
            &two,
            &[
                (labelled("alice", alice), "repository:website/fe:pull", PULL),
                (labelled("alice", alice), "repository:api/be:pull", PULL),
                (
                    labelled("alice", alice),
                    "repository:api/website:pull",
                    NONE,
                ),
                (
                    labelled("alice", &[("project", &["api"])]),
                    "repository:api/fe:pull",
                    NONE,
                ),
            ],
        );
        // A placeholder used twice takes the same value in both places.
        let twice =
            acl(r#"[{match: {name: "${labels:project}/${labels:project}-*"}, actions: ["pull"]}]"#);
        table(
            &twice,
            &[
                (labelled("alice", alice), "repository:api/api-x:pull", PULL),
                (
                    labelled("alice", alice),
                    "repository:website/website-x:pull",
                    PULL,
                ),
                (
                    labelled("alice", alice),
                    "repository:website/api-x:pull",
                    NONE,
                ),
            ],
        );
        // In a regex as well.
        let regex =
            acl(r#"[{match: {name: "/(${labels:project})\\/[a-z]+/"}, actions: ["pull"]}]"#);
        table(
            &regex,
            &[
                (labelled("alice", alice), "repository:api/x:pull", PULL),
                (labelled("alice", alice), "repository:api/x1:pull", NONE),
                (labelled("alice", alice), "repository:other/x:pull", NONE),
            ],
        );
    }

    #[test]
    fn too_many_label_combinations_do_not_match() {
        let values: Vec<String> = (0..300).map(|i| format!("p{i}")).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let labels: &[(&str, &[&str])] = &[("project", &refs)];
        // Used once: an alternation of 300 values, fine.
        let once = acl(r#"[{match: {name: "${labels:project}/*"}, actions: ["pull"]}]"#);
        table(
            &once,
            &[(labelled("a", labels), "repository:p299/x:pull", PULL)],
        );
        // Used twice: 300 combinations, above the limit, so it is refused.
        let twice =
            acl(r#"[{match: {name: "${labels:project}/${labels:project}"}, actions: ["pull"]}]"#);
        table(
            &twice,
            &[
                (labelled("a", labels), "repository:p1/p1:pull", NONE),
                (
                    labelled("a", &labels_of(&refs[..200])),
                    "repository:p199/p199:pull",
                    PULL,
                ),
            ],
        );
    }

    fn labels_of<'a>(values: &'a [&'a str]) -> [(&'a str, &'a [&'a str]); 1] {
        [("project", values)]
    }

    #[test]
    fn label_conditions() {
        let acl = acl(r#"
- match: {labels: {group: "admins", team: "ops"}}
  actions: ["*"]
- match: {labels: {group: "dev*"}}
  actions: ["push", "pull"]
- match: {labels: {group: "/(qa|test)ers/"}}
  actions: ["pull"]
"#);
        table(
            &acl,
            &[
                (
                    labelled("a", &[("group", &["x", "admins"]), ("team", &["ops"])]),
                    "repository:z:delete",
                    &["delete"],
                ),
                // Every listed key must be present and match.
                (
                    labelled("a", &[("group", &["admins"])]),
                    "repository:z:delete",
                    NONE,
                ),
                (
                    labelled("a", &[("group", &["admins"]), ("team", &["dev"])]),
                    "repository:z:delete",
                    NONE,
                ),
                (
                    labelled("a", &[("group", &["developers"])]),
                    "repository:z:push",
                    &["push"],
                ),
                (
                    labelled("a", &[("group", &["testers"])]),
                    "repository:z:push,pull",
                    PULL,
                ),
                (
                    labelled("a", &[("group", &["testers2"])]),
                    "repository:z:pull",
                    NONE,
                ),
                (
                    labelled("a", &[("grp", &["admins"])]),
                    "repository:z:pull",
                    NONE,
                ),
                (user("a"), "repository:z:pull", NONE),
            ],
        );
    }

    #[test]
    fn regex_patterns_are_anchored() {
        let acl = acl(r#"
- match: {name: "/myorg\\/(app|lib)-[0-9]+/"}
  actions: ["pull"]
- match: {account: "/adm.n/"}
  actions: ["push"]
"#);
        table(
            &acl,
            &[
                (user("x"), "repository:myorg/app-1:pull", PULL),
                (user("x"), "repository:myorg/lib-42:pull", PULL),
                (user("x"), "repository:xmyorg/app-1:pull", NONE),
                (user("x"), "repository:myorg/app-1x:pull", NONE),
                (user("x"), "repository:myorg/tool-1:pull", NONE),
                (user("admin"), "repository:any:push", &["push"]),
                (user("sysadmin"), "repository:any:push", NONE),
                (user("admin2"), "repository:any:push", NONE),
            ],
        );
        // `//` and `/` are too short to be regexes: they are literal globs.
        let short = super::tests::acl(r#"[{match: {name: "//"}, actions: ["pull"]}]"#);
        table(
            &short,
            &[
                (user("x"), "repository://:pull", PULL),
                (user("x"), "repository:a:pull", NONE),
            ],
        );
    }

    #[test]
    fn ip_and_cidr() {
        let acl = acl(r#"
- match: {ip: "10.0.0.0/8"}
  actions: ["pull"]
- match: {ip: "192.0.2.7"}
  actions: ["push"]
- match: {ip: "2001:db8::/32"}
  actions: ["delete"]
- match: {ip: "::1"}
  actions: ["*"]
- match: {ip: "::ffff:198.51.100.0/120"}
  actions: ["pull", "push"]
"#);
        let s = "repository:x:pull,push,delete";
        table(
            &acl,
            &[
                (from_ip("10.1.2.3"), s, PULL),
                (from_ip("11.1.2.3"), s, NONE),
                (from_ip("192.0.2.7"), s, &["push"]),
                (from_ip("192.0.2.8"), s, NONE),
                (from_ip("2001:db8:1::5"), s, &["delete"]),
                (from_ip("2001:db9::5"), s, NONE),
                (from_ip("::1"), s, &["pull", "push", "delete"]),
                (from_ip("::2"), s, NONE),
                // An IPv4-mapped client address is matched as IPv4.
                (from_ip("::ffff:10.9.9.9"), s, PULL),
                // A v4-mapped rule prefix covers the IPv4 clients.
                (from_ip("198.51.100.9"), s, &["pull", "push"]),
                (from_ip("198.51.101.9"), s, NONE),
            ],
        );
    }

    #[test]
    fn service_and_type() {
        let acl = acl(r#"
- match: {service: "registry.example.com", type: "registry", name: "catalog"}
  actions: ["*"]
- match: {service: "/mirror-[0-9]+\\.example\\.com/", type: "repository"}
  actions: ["pull"]
- match: {service: "*.internal"}
  actions: ["push"]
"#);
        table(
            &acl,
            &[
                (to_service(SERVICE), "registry:catalog:*", &["*"]),
                (to_service("other"), "registry:catalog:*", NONE),
                (to_service(SERVICE), "repository:catalog:pull", NONE),
                (
                    to_service("mirror-2.example.com"),
                    "repository:a/b:push,pull",
                    PULL,
                ),
                (
                    to_service("mirror-2.example.com"),
                    "registry:catalog:*",
                    NONE,
                ),
                (
                    to_service("mirror-x.example.com"),
                    "repository:a/b:pull",
                    NONE,
                ),
                (
                    to_service("a.internal"),
                    "repository:a/b:push,pull",
                    &["push"],
                ),
                (to_service("a.b.internal"), "repository:a/b:push", &["push"]),
                (to_service("a/b.internal"), "repository:a/b:push", NONE),
            ],
        );
    }

    #[test]
    fn first_match_wins_and_empty_actions_deny() {
        let deny_first = acl(r#"
- match: {account: "alice", name: "myorg/secret"}
  actions: []
  comment: "deny"
- match: {account: "alice"}
  actions: ["*"]
- match: {}
  actions: ["pull"]
"#);
        table(
            &deny_first,
            &[
                (user("alice"), "repository:myorg/secret:pull", NONE),
                (user("alice"), "repository:myorg/app:push,pull", PUSH_PULL),
                // The catch-all `match: {}` gives everyone else pull.
                (user("bob"), "repository:myorg/secret:push,pull", PULL),
                (user(""), "repository:anything:pull", PULL),
            ],
        );
        let allow_first = acl(r#"
- match: {account: "alice"}
  actions: ["*"]
- match: {account: "alice", name: "myorg/secret"}
  actions: []
"#);
        table(
            &allow_first,
            &[(user("alice"), "repository:myorg/secret:pull", PULL)],
        );
        // A narrower rule first gives less than a broader one below it would.
        let narrow_first = acl(r#"
- match: {name: "myorg/*"}
  actions: ["pull"]
- match: {account: "alice"}
  actions: ["*"]
"#);
        table(
            &narrow_first,
            &[
                (user("alice"), "repository:myorg/app:push,pull", PULL),
                (user("alice"), "repository:other/app:push,pull", PUSH_PULL),
            ],
        );
        // The decision names the rule.
        let id = Identity {
            account: "alice".into(),
            labels: BTreeMap::new(),
            valid_until: None,
        };
        let req = RequestInfo {
            ip: "192.0.2.1".parse().unwrap(),
            service: SERVICE.into(),
        };
        let d = deny_first.evaluate(
            &id,
            &req,
            &ResourceActions::parse_scope("repository:myorg/secret:pull").unwrap(),
        );
        assert_eq!(
            d,
            Decision {
                rule: Some(0),
                granted: vec![]
            }
        );
        assert_eq!(deny_first.comment(0), Some("deny"));
        assert_eq!(deny_first.comment(1), None);
        let d = deny_first.evaluate(
            &id,
            &req,
            &ResourceActions::parse_scope("repository:x:pull").unwrap(),
        );
        assert_eq!(d.rule, Some(1));
    }

    #[test]
    fn granted_is_requested_intersect_allowed() {
        let acl = acl(r#"
- match: {name: "pull-only"}
  actions: ["pull"]
- match: {name: "star"}
  actions: ["*"]
- match: {name: "two"}
  actions: ["pull", "push"]
- match: {name: "star-and-more"}
  actions: ["pull", "*"]
"#);
        let u = || user("x");
        table(
            &acl,
            &[
                (u(), "repository:pull-only:push,pull", PULL),
                (u(), "repository:pull-only:push", NONE),
                (u(), "repository:pull-only:*", NONE),
                // `*` allows everything requested, in the requested order.
                (
                    u(),
                    "repository:star:push,pull,delete",
                    &["push", "pull", "delete"],
                ),
                (u(), "repository:star:*", &["*"]),
                (u(), "repository:star:pull,*", &["pull", "*"]),
                // The requested order is kept, duplicates dropped.
                (u(), "repository:two:push,delete,pull", PUSH_PULL),
                (u(), "repository:two:pull,pull", PULL),
                // A requested `*` needs `*` among the allowed actions.
                (u(), "repository:two:*", NONE),
                (u(), "repository:two:*,pull", PULL),
                (u(), "repository:star-and-more:push,*", &["push", "*"]),
            ],
        );
    }

    #[test]
    fn no_rule_grants_nothing() {
        let empty = Acl::compile(&[]).unwrap();
        assert!(empty.is_empty());
        table(&empty, &[(user("admin"), "repository:x:pull", NONE)]);
        assert_eq!(Acl::default().len(), 0);
        let other = acl(r#"[{match: {account: "admin"}, actions: ["*"]}]"#);
        assert_eq!(other.len(), 1);
        table(
            &other,
            &[
                (user("admin"), "repository:x:pull", PULL),
                (user("bob"), "repository:x:pull", NONE),
                (user(""), "repository:x:pull", NONE),
            ],
        );
    }

    #[test]
    fn absent_account_matches_anyone() {
        let acl = acl(r#"[{match: {name: "public/*"}, actions: ["pull"]}]"#);
        table(
            &acl,
            &[
                (user(""), "repository:public/a:pull", PULL),
                (user("alice"), "repository:public/a:pull", PULL),
                (user("alice"), "repository:private/a:pull", NONE),
            ],
        );
    }

    #[test]
    fn compile_reports_every_error() {
        let errs = errors(
            r#"
- match: {account: "admin"}
  actions: ["*"]
- match: {name: "/foo(/"}
  actions: ["pull"]
- match: {ip: "10.0.0.0/33", service: "/[/"}
  actions: ["pull"]
- match: {name: "${acount}/*"}
  actions: ["pull"]
- match: {ip: "192.168.0.*"}
  actions: ["pull"]
- match: {labels: {group: "/(a/"}, name: "${labels:}"}
  actions: ["pull"]
- match: {name: "${account:1}/*", type: "${name:1}"}
  actions: ["pull"]
- match: {account: "/(.+)@x/", name: "${account:2}/*"}
  actions: ["pull"]
- match: {name: "a[]", account: "b[z-a]", service: "c[x", type: "d\\"}
  actions: [""]
- match: {name: "/a)|(b/"}
  actions: ["pull"]
- match: {name: "${account"}
  actions: ["pull"]
- match: {account: "/(.+)/", name: "${account:0}"}
  actions: ["pull"]
- match: {account: "/(x/", name: "${account:1}"}
  actions: ["pull"]
"#,
        );
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.index, e.field.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (1, "match.name"),
                (2, "match.service"),
                (2, "match.ip"),
                (3, "match.name"),
                (4, "match.ip"),
                (5, "match.name"),
                (5, "match.labels.group"),
                (6, "match.type"),
                (6, "match.name"),
                (7, "match.name"),
                (8, "match.account"),
                (8, "match.type"),
                (8, "match.name"),
                (8, "match.service"),
                (8, "actions"),
                (9, "match.name"),
                (10, "match.name"),
                (11, "match.name"),
                // The bad regex is reported once, not again through `${account:1}`.
                (12, "match.account"),
            ],
            "{errs:#?}"
        );
        let message = |i: usize, field: &str| {
            errs.iter()
                .find(|e| e.index == i && e.field == field)
                .map(|e| e.message.clone())
                .unwrap()
        };
        assert!(message(1, "match.name").contains("invalid regex"));
        assert!(message(3, "match.name").contains("unknown placeholder \"${acount}\""));
        assert!(message(7, "match.name").contains("capture group 2"));
        assert!(message(6, "match.name").contains("to be a /regex/"));
        assert!(message(8, "match.name").contains("empty character class"));
        assert!(message(8, "match.account").contains("out of order"));
        assert!(message(10, "match.name").contains("unterminated placeholder"));
        assert!(message(11, "match.name").contains("count from 1"));
        assert_eq!(
            errs[0].to_string(),
            format!("acl[1].match.name: {}", errs[0].message)
        );
    }

    #[test]
    fn escaped_dollar_is_literal() {
        let glob = acl(r#"[{match: {name: "\\${account}"}, actions: ["pull"]}]"#);
        let regex = acl(r#"[{match: {name: "/a\\$\\{account\\}/"}, actions: ["pull"]}]"#);
        table(
            &glob,
            &[
                (user("bob"), "repository:${account}:pull", PULL),
                (user("bob"), "repository:bob:pull", NONE),
            ],
        );
        table(
            &regex,
            &[
                (user("bob"), "repository:a${account}:pull", PULL),
                (user("bob"), "repository:abob:pull", NONE),
            ],
        );
    }

    #[test]
    fn yaml_shape() {
        let yaml = r#"
- match: {account: "admin"}
  actions: ["*"]
  comment: "Admin has full access to everything."
- match: {account: "", name: "myorg/**"}
  actions: ["pull"]
- match: {account: "/.+/", name: "${account}/*"}
  actions: ["*"]
- match: {ip: "10.0.0.0/8", type: "repository"}
  actions: ["pull"]
- match: {labels: {"group": "admins"}}
  actions: ["*"]
- match: {name: "${labels:project}/*"}
  actions: ["push", "pull"]
- match: {service: "registry.example.com"}
  actions: []
"#;
        let entries: Vec<AclEntry> = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(entries.len(), 7);
        assert_eq!(entries[0].r#match.account.as_deref(), Some("admin"));
        assert_eq!(
            entries[0].comment.as_deref(),
            Some("Admin has full access to everything.")
        );
        assert_eq!(entries[1].r#match.account.as_deref(), Some(""));
        assert_eq!(entries[3].r#match.kind.as_deref(), Some("repository"));
        assert_eq!(entries[3].r#match.ip.as_deref(), Some("10.0.0.0/8"));
        assert_eq!(entries[4].r#match.labels["group"], "admins");
        assert!(entries[6].actions.is_empty());
        assert!(Acl::compile(&entries).is_ok());
        // Round trip, without empty fields.
        let json = serde_json::to_string(&entries[3]).unwrap();
        assert_eq!(
            json,
            r#"{"match":{"type":"repository","ip":"10.0.0.0/8"},"actions":["pull"]}"#
        );
        let back: AclEntry = serde_json::from_str(&json).unwrap();
        assert_eq!(back, entries[3]);
        // Unknown keys and a missing `actions` are refused.
        for bad in [
            r#"[{match: {acount: "x"}, actions: []}]"#,
            r#"[{match: {}, actions: [], extra: 1}]"#,
            r#"[{match: {}}]"#,
            r#"[{actions: ["pull"]}]"#,
        ] {
            assert!(
                serde_saphyr::from_str::<Vec<AclEntry>>(bad).is_err(),
                "{bad} accepted"
            );
        }
    }
}
