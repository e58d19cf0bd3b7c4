//! docker_auth's `auth_config.yml` to ocimirror's own token service: issuer, lifetime and
//! signing key, users, GitHub and OIDC logins, and the ACL, whose unanchored `/regex/`
//! patterns are rewritten to keep their meaning.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::distribution::{DistAuth, check_htpasswd_path};
use super::durations::{format_duration, go_duration};
use super::source::{Src, scalar_string};
use super::tree::{Node, s};
use super::{NoteKind, Out};

/// docker_auth's `auth_config.yml`: ocimirror's own token service replaces it.
pub(super) fn map_docker_auth(a: &Src, dist: Option<&Src>, dist_auth: &DistAuth, out: &mut Out) {
    let role_auth = dist.is_none();
    if role_auth {
        out.set("role", s("auth"));
        if let Some(addr) = a.str("server.addr") {
            out.set("listen", s(addr));
        }
    } else if let Some(addr) = a.str("server.addr") {
        out.note(
            NoteKind::Changed,
            a.key("server.addr"),
            format!("{addr}: ocimirror serves tokens on its own listen address, at auth.path; point clients' and ingress routes for the token service there"),
        );
    }
    if a.str("server.net").is_some_and(|n| n == "unix") {
        out.note(
            NoteKind::NotCarried,
            a.key("server.net"),
            "a unix socket: ocimirror listens on TCP only",
        );
    }
    out.set("auth", Node::map());
    // service: the audience the registry expects (Distribution's auth.token.service).
    match dist_auth.token.as_ref().and_then(|t| t.service.clone()) {
        Some(svc) => out.set("auth.service", s(svc)),
        None if role_auth => out.note(
            NoteKind::Todo,
            "auth.service".into(),
            "docker_auth takes the service from each request; ocimirror issues tokens for one: set auth.service to your registry's auth.token.service (left at ocimirror)",
        ),
        None => {}
    }
    let prefix = a
        .str("server.path_prefix")
        .map(|p| p.trim_end_matches('/').to_owned())
        .unwrap_or_default();
    let path = format!("{prefix}/auth");
    if path != "/auth" {
        out.set("auth.path", s(path.clone()));
    }
    if let Some(t) = &dist_auth.token
        && let (Some(realm), Some(d)) = (&t.realm, dist)
    {
        out.note(
            NoteKind::Changed,
            d.key("auth.token.realm"),
            format!("{realm}: clients now get tokens from ocimirror itself, at {path} on its own address (auth.realm unset: derived from the request); route that URL to ocimirror, or set auth.realm to it"),
        );
    }
    if let Some(iss) = a.str("token.issuer") {
        out.set("auth.issuer", s(iss.clone()));
        if let Some(t) = &dist_auth.token
            && let Some(di) = &t.issuer
            && di != &iss
        {
            out.set(
                "auth.trusted_issuers",
                Node::Seq(vec![s(iss.clone()), s(di.clone())]),
            );
            out.note(
                NoteKind::Changed,
                a.key("token.issuer"),
                format!("{iss:?} differs from the registry's auth.token.issuer {di:?} (the registry refused these tokens); both are trusted"),
            );
        }
    }
    if let Some(v) = a.get("token.expiration") {
        match scalar_string(v).and_then(|s| s.parse::<u64>().ok()) {
            Some(n) if n > 0 => {
                out.set("auth.token_ttl", s(format_duration(Duration::from_secs(n))))
            }
            _ => out.note(
                NoteKind::NotCarried,
                a.key("token.expiration"),
                "not a number of seconds",
            ),
        }
    }
    // Signing key: token.* or, as docker_auth falls back, the server's TLS pair.
    let (key, cert, from_server) = match (a.str("token.key"), a.str("token.certificate")) {
        (Some(k), Some(c)) => (Some(k), Some(c), false),
        _ => (a.str("server.key"), a.str("server.certificate"), true),
    };
    if from_server {
        a.mark("token.key");
        a.mark("token.certificate");
    }
    match (&key, &cert) {
        (Some(k), Some(c)) => {
            out.set("auth.key", s(k.clone()));
            out.set("auth.certificate", s(c.clone()));
            for (what, p) in [("key", k), ("certificate", c)] {
                if !Path::new(p).exists() {
                    out.note(
                        NoteKind::Todo,
                        format!("auth.{what}"),
                        format!("{p} does not exist here: make sure it is there where ocimirror runs"),
                    );
                }
            }
        }
        _ => out.note(
            NoteKind::Todo,
            "auth.key".into(),
            "no token signing key in auth_config.yml (token.key/certificate or server.key/certificate): create one with ocimirror keygen and set auth.key and auth.certificate",
        ),
    }
    if from_server && a.has("server.certificate") {
        out.note(
            NoteKind::Changed,
            a.key("server.certificate"),
            "docker_auth signed tokens with its TLS pair (token.certificate unset): ocimirror signs with it too (auth.key/certificate)",
        );
    }
    // The token service's own TLS, when ocimirror replaces docker_auth alone.
    if role_auth
        && let (Some(c), Some(k)) = (a.peek("server.certificate"), a.peek("server.key"))
        && let (Some(c), Some(k)) = (scalar_string(c), scalar_string(k))
    {
        a.mark("server.certificate");
        a.mark("server.key");
        out.set("tls.certificate", s(c));
        out.set("tls.key", s(k));
    }
    if a.bool("token.disable_legacy_key_id") == Some(true) {
        out.set("auth.kid", s("thumbprint"));
    }
    if let Some(h) = a.str("server.real_ip_header") {
        out.set("auth.real_ip_header", s(h.clone()));
        // docker_auth believes the header from any client; ocimirror only from the proxies.
        out.note(
            NoteKind::Todo,
            "auth.trusted_proxies".into(),
            format!(
                "list the addresses or CIDR prefixes of the proxies that set {h}: ocimirror reads \
                 it only from them, and config check refuses auth.real_ip_header until they are \
                 listed"
            ),
        );
        match a.get("server.real_ip_pos").and_then(Value::as_i64) {
            None | Some(0) => {}
            Some(pos) => out.note(
                NoteKind::Changed,
                a.key("server.real_ip_pos"),
                format!(
                    "{pos}: ocimirror counts no positions: it takes the rightmost address of the \
                     header that is not one of auth.trusted_proxies"
                ),
            ),
        }
    }
    // Trust what the registry trusted, so tokens the old service issued stay valid meanwhile.
    if let Some(t) = &dist_auth.token {
        if let Some(v) = &t.rootcertbundle {
            out.set("auth.trusted_certificates", s(v.clone()));
        }
        if let Some(v) = &t.jwks {
            out.set("auth.trusted_jwks", s(v.clone()));
        }
    }

    map_users(a, out);
    if let Some(h) = &dist_auth.htpasswd {
        out.set("auth.htpasswd", s(h.clone()));
        if let Some(d) = dist {
            check_htpasswd_path(d, h, out);
        }
    }
    map_github(a, out);
    map_oidc(a, out);
    map_ldap(a, out);
    map_external(a, "ext_auth", out);
    map_external(a, "ext_authz", out);
    map_acl(a, out);
}

fn map_users(a: &Src, out: &mut Out) {
    let Some(users) = a.get("users").and_then(Value::as_object) else {
        return;
    };
    let mut kept = Vec::new();
    for (name, u) in users {
        let u = if u.is_null() {
            serde_json::json!({})
        } else {
            u.clone()
        };
        let has_password = u
            .get("password")
            .and_then(Value::as_str)
            .is_some_and(|p| !p.is_empty());
        if !name.is_empty() && !has_password {
            out.note(
                NoteKind::NotCarried,
                a.key(&format!("users.{name}")),
                "no password: docker_auth accepts any password for such a user, ocimirror does not; the user is left out",
            );
            continue;
        }
        kept.push((name.clone(), Node::from_json(&u)));
    }
    out.set("auth.users", Node::Map(kept));
}

fn map_github(a: &Src, out: &mut Out) {
    if !a.has("github_auth") {
        return;
    }
    out.set("auth.github_auth", Node::map());
    if let Some(o) = a.str("github_auth.organization") {
        out.set("auth.github_auth.organization", s(o));
    }
    if let Some(u) = a.str("github_auth.github_api_uri") {
        out.set("auth.github_auth.api_url", s(u.trim_end_matches('/')));
    }
    if let Some(v) = a.get("github_auth.http_timeout") {
        match go_duration(v) {
            Ok(t) if !t.is_zero() => {
                out.set("auth.github_auth.http_timeout", s(format_duration(t)))
            }
            Ok(_) => {}
            Err(e) => out.note(NoteKind::NotCarried, a.key("github_auth.http_timeout"), e),
        }
    }
    let flow: Vec<String> = a
        .keys("github_auth")
        .into_iter()
        .filter(|k| {
            !matches!(
                k.as_str(),
                "organization" | "github_api_uri" | "http_timeout"
            )
        })
        .collect();
    for k in &flow {
        a.mark(&format!("github_auth.{k}"));
    }
    out.note(
        NoteKind::Changed,
        a.key("github_auth"),
        format!(
            "ocimirror has no browser login: users log in with a GitHub personal access token as the password (docker login -u <login>); the throw-away passwords docker_auth handed out stop working{}",
            if flow.is_empty() {
                String::new()
            } else {
                format!(" (not carried: {})", flow.join(", "))
            }
        ),
    );
}

/// `ldap_auth`: the same keys (ocimirror adds `timeout`).
fn map_ldap(a: &Src, out: &mut Out) {
    if !a.has("ldap_auth") {
        return;
    }
    out.set("auth.ldap_auth", Node::map());
    for k in [
        "addr",
        "tls",
        "ca_certificate",
        "bind_dn",
        "bind_password_file",
        "base",
        "filter",
    ] {
        if let Some(v) = a.str(&format!("ldap_auth.{k}")) {
            out.set(&format!("auth.ldap_auth.{k}"), s(v));
        } else {
            a.mark(&format!("ldap_auth.{k}"));
        }
    }
    if let Some(b) = a.bool("ldap_auth.insecure_tls_skip_verify") {
        out.set("auth.ldap_auth.insecure_tls_skip_verify", Node::Bool(b));
    }
    if let Some(labels) = a.get("ldap_auth.labels") {
        out.set("auth.ldap_auth.labels", Node::from_json(labels));
    }
    out.note(
        NoteKind::Changed,
        a.key("ldap_auth"),
        "the same directory, search and bind; ocimirror gives up on the directory after 10s (ldap_auth.timeout) and refuses logins while it is unreachable",
    );
}

/// `ext_auth` / `ext_authz`: the same program with the same protocol.
fn map_external(a: &Src, key: &str, out: &mut Out) {
    if !a.has(key) {
        return;
    }
    let Some(command) = a.str(&format!("{key}.command")) else {
        a.mark(key);
        out.note(
            NoteKind::NotCarried,
            a.key(key),
            "no command: docker_auth refuses to start without one",
        );
        return;
    };
    out.set(&format!("auth.{key}.command"), s(command));
    if let Some(args) = a.get(&format!("{key}.args")).and_then(Value::as_array) {
        let args: Vec<Node> = args.iter().filter_map(scalar_string).map(s).collect();
        out.set(&format!("auth.{key}.args"), Node::Seq(args));
    }
    out.note(
        NoteKind::Changed,
        a.key(key),
        "the same program and protocol; ocimirror kills it after 10s (ext_auth/ext_authz.timeout) and refuses when it hangs, crashes or answers an unknown exit code",
    );
}

fn map_oidc(a: &Src, out: &mut Out) {
    if !a.has("oidc_auth") {
        return;
    }
    out.set("auth.oidc_auth", Node::map());
    if let Some(i) = a.str("oidc_auth.issuer") {
        out.set("auth.oidc_auth.issuer", s(i));
    }
    if let Some(c) = a.str("oidc_auth.client_id") {
        out.set("auth.oidc_auth.client_id", s(c));
    }
    if let Some(c) = a.str("oidc_auth.user_claim") {
        out.set("auth.oidc_auth.username_claim", s(c));
    }
    if let Some(list) = a.get("oidc_auth.labels_claims").and_then(Value::as_array) {
        let claims: Vec<String> = list.iter().filter_map(scalar_string).collect();
        if let Some(first) = claims.first() {
            out.set("auth.oidc_auth.groups_claim", s(first.clone()));
            if first != "groups" || claims.len() > 1 {
                out.note(
                    NoteKind::Changed,
                    a.key("oidc_auth.labels_claims"),
                    format!("ocimirror reads one claim, {first:?}, into the label `groups` (docker_auth named each label after its claim: {}); adjust ACL rules on those labels", claims.join(", ")),
                );
            }
        }
    }
    if let Some(v) = a.get("oidc_auth.http_timeout") {
        match go_duration(v) {
            Ok(t) if !t.is_zero() => out.set("auth.oidc_auth.http_timeout", s(format_duration(t))),
            Ok(_) => {}
            Err(e) => out.note(NoteKind::NotCarried, a.key("oidc_auth.http_timeout"), e),
        }
    }
    let flow: Vec<String> = a
        .keys("oidc_auth")
        .into_iter()
        .filter(|k| {
            !matches!(
                k.as_str(),
                "issuer" | "client_id" | "user_claim" | "labels_claims" | "http_timeout"
            )
        })
        .collect();
    for k in &flow {
        a.mark(&format!("oidc_auth.{k}"));
    }
    out.note(
        NoteKind::Changed,
        a.key("oidc_auth"),
        format!(
            "ocimirror has no browser login: users send an ID token from the issuer as the password; docker_auth's own passwords stop working{}",
            if flow.is_empty() {
                String::new()
            } else {
                format!(" (not carried: {})", flow.join(", "))
            }
        ),
    );
}

fn map_acl(a: &Src, out: &mut Out) {
    let Some(list) = a.get("acl").and_then(Value::as_array) else {
        if !a.has("acl") {
            out.note(
                NoteKind::Changed,
                a.key("acl"),
                "absent: ocimirror denies everything without ACL rules",
            );
        }
        out.set("auth.acl", Node::Seq(Vec::new()));
        return;
    };
    let mut rules = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let Some(obj) = entry.as_object() else {
            rules.push(Node::from_json(entry));
            continue;
        };
        let mut rule = Vec::new();
        if let Some(m) = obj.get("match") {
            let mut conds = Vec::new();
            if let Some(mo) = m.as_object() {
                for (field, v) in mo {
                    let node = match (field.as_str(), v) {
                        ("labels", Value::Object(labels)) => Node::Map(
                            labels
                                .iter()
                                .map(|(lk, lv)| {
                                    let key = format!("acl[{i}].match.labels.{lk}");
                                    (lk.clone(), anchor_pattern(a, &key, lv, out))
                                })
                                .collect(),
                        ),
                        ("ip", v) => Node::from_json(v),
                        (_, v) => anchor_pattern(a, &format!("acl[{i}].match.{field}"), v, out),
                    };
                    conds.push((field.clone(), node));
                }
            } else {
                conds = match Node::from_json(m) {
                    Node::Map(e) => e,
                    _ => Vec::new(),
                };
            }
            rule.push(("match".to_owned(), Node::Map(conds)));
        }
        for k in ["actions", "comment"] {
            if let Some(v) = obj.get(k) {
                rule.push((k.to_owned(), Node::from_json(v)));
            }
        }
        for (k, v) in obj {
            if !matches!(k.as_str(), "match" | "actions" | "comment") {
                rule.push((k.clone(), Node::from_json(v)));
            }
        }
        rules.push(Node::Map(rule));
    }
    out.set("auth.acl", Node::Seq(rules));
}

/// A docker_auth pattern in ocimirror's syntax, with the same meaning: docker_auth's
/// `/regex/` matches anywhere in the value, ocimirror's the whole value.
fn anchor_pattern(a: &Src, key: &str, v: &Value, out: &mut Out) -> Node {
    let Some(p) = v.as_str() else {
        return Node::from_json(v);
    };
    match rewrite_regex(p) {
        Some(new) => {
            out.note(
                NoteKind::Changed,
                a.key(key),
                format!("{p} matched anywhere in the value in docker_auth; ocimirror anchors regexes, so it is written {new} to keep that meaning (simplify it if the whole value was meant)"),
            );
            s(new)
        }
        None => s(p),
    }
}

/// `Some(rewritten)` when `/R/` would mean something else anchored; `None` to keep it.
pub fn rewrite_regex(p: &str) -> Option<String> {
    if !(p.len() > 2 && p.starts_with('/') && p.ends_with('/')) {
        return None;
    }
    let r = &p[1..p.len() - 1];
    if matches!(r, ".+" | ".*" | "^.+$" | "^.*$") {
        return None;
    }
    let ends_anchored = r.ends_with('$') && !r.ends_with("\\$");
    if r.starts_with('^') && ends_anchored && !has_top_level_alternation(r) {
        return None;
    }
    Some(format!("/.*?(?:{r}).*/"))
}

fn has_top_level_alternation(r: &str) -> bool {
    let mut depth = 0i32;
    let mut in_class = false;
    let mut chars = r.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '(' if !in_class => depth += 1,
            ')' if !in_class => depth -= 1,
            '|' if !in_class && depth == 0 => return true,
            _ => {}
        }
    }
    false
}

/// Why a key of docker_auth's config was not carried over.
pub(super) fn not_carried_reason(path: &str) -> &'static str {
    let top = path.split('.').next().unwrap_or(path);
    let two: String = path.split('.').take(2).collect::<Vec<_>>().join(".");
    match (two.as_str(), top) {
        ("server.certificate" | "server.key", _) => {
            "docker_auth's TLS pair: ocimirror's TLS is that of its listen address (tls.certificate/tls.key)"
        }
        (
            "server.letsencrypt"
            | "server.hsts"
            | "server.tls_min_version"
            | "server.tls_curve_preferences"
            | "server.tls_cipher_suites",
            _,
        ) => "TLS settings: terminate TLS in front of ocimirror",
        ("server.net", _) => "ocimirror listens on TCP",
        ("server.real_ip_pos", _) => "only with real_ip_header",
        (
            _,
            "google_auth" | "gitlab_auth" | "mongo_auth" | "xorm_auth" | "plugin_authn"
            | "kubernetes_auth" | "keystone_auth" | "sql_auth" | "http_auth",
        ) => {
            "ocimirror has no such authenticator: these users cannot log in (static users, htpasswd, GitHub tokens, OIDC ID tokens, LDAP and ext_auth programs can)"
        }
        (_, "acl_mongo" | "plugin_authz" | "casbin_authz" | "xorm_acl" | "mongo_acl") => {
            "ocimirror has no such authorizer: only the acl list (and ext_authz) decides"
        }
        _ => {
            "not a setting ocimirror knows (nor, for an unknown key, docker_auth): not carried over"
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::auth::acl::{Acl, AclEntry};
    use crate::auth::{Identity, RequestInfo, ResourceActions};

    /// The rewritten pattern decides every value as docker_auth's unanchored one did, capture
    /// groups included, and anchored patterns are left alone.
    #[test]
    fn regex_rewrite_keeps_docker_auth_meaning() {
        assert_eq!(rewrite_regex("/.+/"), None);
        assert_eq!(rewrite_regex("/^(.+)@test.com$/"), None);
        assert_eq!(rewrite_regex("myorg/*"), None);
        assert_eq!(
            rewrite_regex("/^a|b$/").as_deref(),
            Some("/.*?(?:^a|b$).*/")
        );
        assert_eq!(
            rewrite_regex("/secret/").as_deref(),
            Some("/.*?(?:secret).*/")
        );
        let cases = [
            ("/secret/", &["secret", "team/secret-app", "x"][..]),
            ("/trainee|dev/", &["dev", "devops", "trainees", "ops"][..]),
            ("/^lib/", &["library/x", "x/library"][..]),
            ("/z$/", &["baz", "zab"][..]),
            ("/^a|b$/", &["ax", "xb", "xa"][..]),
        ];
        for (pattern, values) in cases {
            let go = regex::Regex::new(&pattern[1..pattern.len() - 1]).unwrap();
            let new = rewrite_regex(pattern).unwrap();
            let ours = regex::Regex::new(&format!("^(?:{})$", &new[1..new.len() - 1])).unwrap();
            for v in values {
                assert_eq!(go.is_match(v), ours.is_match(v), "{pattern} on {v}");
            }
        }
        // A deny rule still denies, and a capture group captures what it did, end to end
        // through ocimirror's ACL.
        let rules: Vec<AclEntry> = serde_json::from_value(serde_json::json!([
            {"match": {"name": rewrite_regex("/secret/").unwrap()}, "actions": []},
            {"match": {"account": rewrite_regex("/(.+)@example\\.com/").unwrap(), "name": "${account:1}/*"}, "actions": ["*"]},
        ]))
        .unwrap();
        let acl = Acl::compile(&rules).unwrap();
        let req = RequestInfo {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            service: "s".into(),
        };
        let want = |name: &str| ResourceActions {
            kind: "repository".into(),
            name: name.into(),
            actions: vec!["pull".into()],
        };
        let john = Identity {
            account: "john@example.com".into(),
            ..Default::default()
        };
        assert!(
            acl.evaluate(&john, &req, &want("john/secret-app"))
                .granted
                .is_empty()
        );
        assert_eq!(
            acl.evaluate(&john, &req, &want("john/app")).granted,
            vec!["pull"]
        );
        assert!(
            acl.evaluate(&john, &req, &want("jane/app"))
                .granted
                .is_empty()
        );
    }

    #[test]
    fn ldap_and_external_programs_are_carried_over() {
        let i = super::super::import(&super::super::ImportInput {
            docker_auth: Some((
                "auth_config.yml".into(),
                "server:\n  addr: ':5001'\ntoken:\n  issuer: x\n  expiration: 900\next_auth:\n  command: /bin/true\n  args: ['--verbose', 2]\next_authz:\n  command: /bin/false\nldap_auth:\n  addr: ldap.example.com:636\n  tls: always\n  bind_dn: cn=svc,dc=example,dc=com\n  bind_password_file: /etc/pw\n  base: dc=example,dc=com\n  filter: (uid=${account})\n  labels:\n    group:\n      attribute: memberOf\n      parse_cn: true\nacl:\n  - match: {account: admin}\n    actions: ['*']\n".into(),
            )),
            key_dir: "/k".into(),
            ..Default::default()
        })
        .unwrap();
        let c = &i.config;
        assert_eq!(
            c.get(&["auth", "ext_auth", "command"])
                .and_then(Node::as_str),
            Some("/bin/true")
        );
        assert_eq!(
            c.get(&["auth", "ext_auth", "args"]),
            Some(&Node::Seq(vec![s("--verbose"), s("2")]))
        );
        assert_eq!(
            c.get(&["auth", "ext_authz", "command"])
                .and_then(Node::as_str),
            Some("/bin/false")
        );
        assert!(
            !i.notes
                .iter()
                .any(|n| n.kind == super::super::NoteKind::NotCarried
                    && (n.key.contains("ext_auth") || n.key.contains("ldap_auth"))),
            "{:?}",
            i.notes
        );
        // The output is a config ocimirror reads.
        let parsed: crate::config::Config = serde_saphyr::from_str(&i.render()).unwrap();
        let auth = parsed.auth.unwrap();
        assert_eq!(auth.ext_auth.unwrap().args, ["--verbose", "2"]);
        assert_eq!(auth.ext_authz.unwrap().timeout, "10s");
        let ldap = auth.ldap_auth.unwrap();
        assert_eq!(ldap.addr, "ldap.example.com:636");
        assert_eq!(ldap.filter, "(uid=${account})");
        assert_eq!(ldap.bind_password_file.unwrap().to_str(), Some("/etc/pw"));
        assert!(ldap.labels["group"].parse_cn);
        assert_eq!(ldap.labels["group"].attribute, "memberOf");
    }
}
