//! What proxies in front of the mirror say about a request, believed only from trusted ones: the
//! one place a request's client address is decided (for per-client rate limits and blob stream
//! shares, `storage.redirect.except`, the access log, the ACL's `ip` and the login throttle), and
//! the host and scheme the client addressed (for the realm of a challenge).
//!
//! As nginx's realip module with `real_ip_recursive on`: the address header
//! (`real_ip_header`, e.g. `X-Forwarded-For`) is read only when the connection's peer is one of
//! `trusted_proxies`, and the client is then the rightmost address in it that is not itself a
//! trusted proxy. Each proxy appends the address it saw, so everything left of what the first
//! trusted proxy appended is the client's own say and never consulted: a client cannot claim
//! another address, whatever it sends. An entry that is not an address (garbage, `unknown`, an
//! obfuscated RFC 7239 node) ends the walk at the last trusted hop. Addresses may carry a port
//! (`192.0.2.1:4711`, `[2001:db8::1]:4711`); the `Forwarded` header's `for=` is understood.
//! `X-Forwarded-Host` and `X-Forwarded-Proto` follow the same rule: read only from a trusted
//! peer, else the request's own authority (HTTP/2's `:authority`, else `Host`) and the scheme
//! of the connection it came in on.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::{HeaderMap, HeaderName, header};
use ipnet::IpNet;

/// How to find a request's client address: the peer, or behind trusted proxies their header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RealIp {
    /// `None`: the connection's peer is the client.
    header: Option<HeaderName>,
    trusted: Vec<IpNet>,
}

/// A problem with its key relative to the section holding `real_ip_header`.
pub type Problem = (String, String);

impl RealIp {
    /// The connection's peer is the client, whatever the request says.
    pub fn peer_only() -> Self {
        RealIp::default()
    }

    /// From a section's `real_ip_header` and `trusted_proxies` (addresses or CIDR prefixes),
    /// with every problem keyed within the section. A header without trusted proxies is refused
    /// rather than ignored: ignoring it would silently make every client behind the proxy one
    /// client (one rate limit, one login throttle, the proxy's address in ACL `ip` rules).
    pub fn new(header: Option<&str>, trusted: &[String]) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let header = header.map(str::trim).filter(|h| !h.is_empty());
        let name = header.and_then(|h| match HeaderName::try_from(h) {
            Ok(n) => Some(n),
            Err(_) => {
                problems.push((
                    "real_ip_header".into(),
                    format!("{h:?} is not a header name"),
                ));
                None
            }
        });
        let mut nets = Vec::with_capacity(trusted.len());
        for (i, t) in trusted.iter().enumerate() {
            let t = t.trim();
            match t.parse::<IpAddr>().map(IpNet::from).or_else(|_| t.parse()) {
                Ok(n) => nets.push(canonical_net(n)),
                Err(_) => problems.push((
                    format!("trusted_proxies[{i}]"),
                    format!("{t:?} is neither an IP address nor a CIDR prefix (like 10.0.0.0/8)"),
                )),
            }
        }
        match (header, trusted.is_empty()) {
            (Some(h), true) => problems.push((
                "real_ip_header".into(),
                format!(
                    "{h} is read only from the proxies listed in trusted_proxies, and none is \
                     listed: any client could claim any address with it. List the addresses or \
                     CIDR prefixes of the proxies that set it (trusted_proxies: [10.0.0.0/8]), \
                     or remove real_ip_header"
                ),
            )),
            (None, false) => problems.push((
                "trusted_proxies".into(),
                "lists proxies, but real_ip_header names no header to read the client address \
                 from"
                    .into(),
            )),
            _ => {}
        }
        if problems.is_empty() {
            Ok(RealIp {
                header: name,
                trusted: nets,
            })
        } else {
            Err(problems)
        }
    }

    /// The client's address for a request from `peer` (`None` when the peer is unknown).
    pub fn client(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<IpAddr> {
        let peer = peer?.ip().to_canonical();
        let Some(name) = &self.header else {
            return Some(peer);
        };
        // Several header lines are one list, in order (RFC 9110 5.3).
        let values = headers.get_all(name).iter().map(|v| v.as_bytes());
        let forwarded = name == axum::http::header::FORWARDED;
        Some(rightmost_untrusted(values, forwarded, peer, &self.trusted))
    }
}

/// Where a request was sent, as its client addressed it: what the realm of a challenge is
/// built from when `auth.realm` is not set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin<'h> {
    /// A hostname or IP address with an optional port (see [`is_host`]); `None`: the request
    /// named no usable host.
    pub host: Option<&'h str>,
    pub https: bool,
}

/// What a request and its connection say of where it was sent, before any proxy's word.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reached<'h> {
    /// The request target's authority: HTTP/2's `:authority`, or an absolute-form HTTP/1
    /// target's. When there is one it is the host, and `Host` is not read (RFC 9113 8.3.1,
    /// RFC 9112 3.2.2); an HTTP/2 request usually carries no `Host` at all.
    pub authority: Option<&'h str>,
    /// The connection is TLS the mirror terminated itself.
    pub tls: bool,
}

impl RealIp {
    /// Whether `peer` is a trusted proxy, whose headers about the request are believed.
    fn trusts(&self, peer: Option<SocketAddr>) -> bool {
        peer.is_some_and(|p| is_trusted(p.ip().to_canonical(), &self.trusted))
    }

    /// Where a request from `peer` was sent. From a trusted proxy, `X-Forwarded-Host` and
    /// `X-Forwarded-Proto` say it (the host and scheme the client used to reach the proxy);
    /// from any other peer they are the client's own say and never read: the request's own
    /// authority (else its `Host`) is the host, and the scheme is the connection's (`https`
    /// when the mirror terminated TLS on it). A host that is not one hostname or IP address
    /// with an optional port (a list, quotes, spaces, slashes, control characters, userinfo)
    /// is ignored, since it is echoed into a response header.
    pub fn origin<'h>(
        &self,
        headers: &'h HeaderMap,
        reached: Reached<'h>,
        peer: Option<SocketAddr>,
    ) -> Origin<'h> {
        let host = |name| one_value(headers, name).filter(|h| is_host(h));
        let own = Origin {
            host: match reached.authority {
                Some(a) => Some(a).filter(|a| is_host(a)),
                None => host(header::HOST.as_str()),
            },
            https: reached.tls,
        };
        if !self.trusts(peer) {
            return own;
        }
        Origin {
            host: host("x-forwarded-host").or(own.host),
            https: one_value(headers, "x-forwarded-proto")
                .map_or(own.https, |p| p.eq_ignore_ascii_case("https")),
        }
    }
}

/// The header's value when it is sent exactly once, as text, trimmed; several lines are a list
/// and none of its entries is believed over the others.
fn one_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut all = headers.get_all(name).iter();
    let v = all.next()?;
    if all.next().is_some() {
        return None;
    }
    v.to_str().ok().map(str::trim)
}

/// A `Host`-style value: a hostname, an IPv4 address or a bracketed IPv6 address, with an
/// optional port. Only letters, digits and `.-_:[]` can pass, so it is safe in a quoted string.
fn is_host(s: &str) -> bool {
    if s.len() > 255 {
        return false;
    }
    if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        return v6.parse::<Ipv6Addr>().is_ok()
            && (after.is_empty() || after.strip_prefix(':').is_some_and(is_port));
    }
    let (name, port) = match s.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (s, None),
    };
    port.is_none_or(is_port)
        && !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        })
}

fn is_port(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 5
        && p.bytes().all(|b| b.is_ascii_digit())
        && p.parse::<u16>().is_ok()
}

/// `::ffff:10.0.0.0/104` is `10.0.0.0/8`, so a dual-stack listener's mapped peers match it.
fn canonical_net(n: IpNet) -> IpNet {
    match n {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(n, IpNet::V4),
            None => n,
        },
        n => n,
    }
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// Walk the header's entries from the right, starting at the peer: while the address in hand
/// is a trusted proxy, the entry left of it names who connected to that proxy.
fn rightmost_untrusted<'a>(
    values: impl DoubleEndedIterator<Item = &'a [u8]>,
    forwarded: bool,
    peer: IpAddr,
    trusted: &[IpNet],
) -> IpAddr {
    let mut client = peer;
    if !is_trusted(client, trusted) {
        return client;
    }
    for value in values.rev() {
        for entry in value.rsplit(|b| *b == b',') {
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                continue;
            }
            let parsed = std::str::from_utf8(entry).ok().and_then(|e| {
                if forwarded {
                    forwarded_for(e).and_then(node)
                } else {
                    node(e)
                }
            });
            let Some(ip) = parsed else {
                return client;
            };
            client = ip.to_canonical();
            if !is_trusted(client, trusted) {
                return client;
            }
        }
    }
    client
}

/// The `for=` parameter of one RFC 7239 `Forwarded` element, unquoted.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then(|| {
            let v = v.trim();
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
        })
    })
}

/// An address, possibly with a port: `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:80`.
fn node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse::<Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

/// The client address in a log line: `-` when unknown.
pub struct Shown(pub Option<IpAddr>);

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real_ip(header: &str, trusted: &[&str]) -> RealIp {
        let trusted: Vec<String> = trusted.iter().map(|s| s.to_string()).collect();
        RealIp::new(Some(header), &trusted).unwrap()
    }

    fn headers(name: &str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(HeaderName::try_from(name).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn peer(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    const PROXY: &str = "10.0.0.5:40000";

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let r = real_ip("x-forwarded-for", &["10.0.0.0/8"]);
        let h = headers("x-forwarded-for", &["192.0.2.1"]);
        assert_eq!(r.client(&h, peer("203.0.113.9:1234")), ip("203.0.113.9"));
        // Naming a trusted proxy as the last hop does not make it one.
        let h = headers("x-forwarded-for", &["192.0.2.1, 10.0.0.5"]);
        assert_eq!(r.client(&h, peer("203.0.113.9:1234")), ip("203.0.113.9"));
        assert_eq!(
            RealIp::peer_only().client(&h, peer("203.0.113.9:1")),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn behind_a_trusted_proxy_the_rightmost_untrusted_entry_is_the_client() {
        let r = real_ip("x-forwarded-for", &["10.0.0.0/8", "172.16.0.1"]);
        let h = headers("x-forwarded-for", &["198.51.100.7"]);
        assert_eq!(r.client(&h, peer(PROXY)), ip("198.51.100.7"));
        // The client's own (spoofed) entries are left of what the proxy appended.
        let h = headers("x-forwarded-for", &["1.1.1.1, 8.8.8.8,198.51.100.7"]);
        assert_eq!(r.client(&h, peer(PROXY)), ip("198.51.100.7"));
        // Through a chain of trusted proxies.
        let h = headers(
            "x-forwarded-for",
            &["1.1.1.1, 198.51.100.7, 172.16.0.1, 10.1.2.3"],
        );
        assert_eq!(r.client(&h, peer(PROXY)), ip("198.51.100.7"));
        // Several header lines are one list.
        let h = headers("x-forwarded-for", &["1.1.1.1, 198.51.100.7", "10.1.2.3"]);
        assert_eq!(r.client(&h, peer(PROXY)), ip("198.51.100.7"));
        // Every entry trusted: the leftmost; no header: the proxy itself.
        let h = headers("x-forwarded-for", &["10.9.9.9, 10.1.2.3"]);
        assert_eq!(r.client(&h, peer(PROXY)), ip("10.9.9.9"));
        assert_eq!(r.client(&HeaderMap::new(), peer(PROXY)), ip("10.0.0.5"));
        assert_eq!(r.client(&HeaderMap::new(), None), None);
    }

    #[test]
    fn ipv6_ports_and_mapped_addresses() {
        let r = real_ip("x-forwarded-for", &["2001:db8:1::/48", "10.0.0.0/8"]);
        let h = headers(
            "x-forwarded-for",
            &["1.1.1.1, [2001:db8:2::7]:4711, 2001:db8:1::9"],
        );
        assert_eq!(
            r.client(&h, peer("[2001:db8:1::1]:443")),
            ip("2001:db8:2::7")
        );
        let h = headers("x-forwarded-for", &["2001:db8:2::8, [2001:db8:1::9]"]);
        assert_eq!(
            r.client(&h, peer("[2001:db8:1::1]:443")),
            ip("2001:db8:2::8")
        );
        let h = headers("x-forwarded-for", &["192.0.2.1:5555, 10.2.3.4:80"]);
        assert_eq!(r.client(&h, peer(PROXY)), ip("192.0.2.1"));
        // A dual-stack listener sees IPv4 peers mapped; forwarded mapped addresses are IPv4.
        let h = headers("x-forwarded-for", &["::ffff:192.0.2.9"]);
        assert_eq!(r.client(&h, peer("[::ffff:10.0.0.5]:1")), ip("192.0.2.9"));
        // Trusted as mapped IPv6, matched as IPv4.
        let r = real_ip("x-real-ip", &["::ffff:10.0.0.0/104"]);
        let h = headers("x-real-ip", &["192.0.2.10"]);
        assert_eq!(r.client(&h, peer(PROXY)), ip("192.0.2.10"));
    }

    #[test]
    fn a_malformed_entry_ends_the_walk_at_the_last_trusted_hop() {
        let r = real_ip("x-forwarded-for", &["10.0.0.0/8"]);
        for bad in [
            "unknown",
            "198.51.100.7 198.51.100.8",
            "fe80::1%eth0",
            "198.51.100.256",
            "[198.51.100.7]",
            "example.com",
        ] {
            let h = headers("x-forwarded-for", &[&format!("192.0.2.1, {bad}")]);
            assert_eq!(r.client(&h, peer(PROXY)), ip("10.0.0.5"), "{bad}");
            let h = headers("x-forwarded-for", &[&format!("{bad}, 10.7.7.7")]);
            assert_eq!(r.client(&h, peer(PROXY)), ip("10.7.7.7"), "{bad}");
        }
        // Garbage (not even text) left of the proxy's entry is never read.
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"\xff\xfe, ,,, 198.51.100.7").unwrap(),
        );
        assert_eq!(r.client(&h, peer(PROXY)), ip("198.51.100.7"));
    }

    #[test]
    fn forwarded_header_for_parameters() {
        let r = real_ip("Forwarded", &["10.0.0.0/8"]);
        let h = headers(
            "forwarded",
            &[
                "for=1.1.1.1, For=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.3.3.3;by=10.0.0.5",
            ],
        );
        assert_eq!(r.client(&h, peer(PROXY)), ip("2001:db8:cafe::17"));
        let h = headers("forwarded", &["for=192.0.2.60;proto=http;by=203.0.113.43"]);
        assert_eq!(r.client(&h, peer(PROXY)), ip("192.0.2.60"));
        let h = headers("forwarded", &["for=unknown"]);
        assert_eq!(r.client(&h, peer(PROXY)), ip("10.0.0.5"));
    }

    fn origin_of<'h>(r: &RealIp, h: &'h HeaderMap, from: &str) -> (Option<&'h str>, bool) {
        let o = r.origin(h, Reached::default(), peer(from));
        (o.host, o.https)
    }

    #[test]
    fn forwarded_host_and_proto_only_from_trusted_proxies() {
        let r = real_ip("x-forwarded-for", &["10.0.0.0/8"]);
        let mut h = headers("host", &["mirror.internal:5000"]);
        h.insert("x-forwarded-host", "mirror.example.com".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert_eq!(origin_of(&r, &h, PROXY), (Some("mirror.example.com"), true));
        // A client connecting directly says what it likes; only its Host is taken, over HTTP.
        assert_eq!(
            origin_of(&r, &h, "203.0.113.9:1234"),
            (Some("mirror.internal:5000"), false)
        );
        assert_eq!(
            origin_of(&RealIp::peer_only(), &h, PROXY),
            (Some("mirror.internal:5000"), false)
        );
        assert_eq!(
            r.origin(&h, Reached::default(), None).host,
            Some("mirror.internal:5000")
        );
        // From a trusted proxy without the headers: the request's own.
        let plain = headers("host", &["mirror.internal:5000"]);
        assert_eq!(
            origin_of(&r, &plain, PROXY),
            (Some("mirror.internal:5000"), false)
        );
        // Mapped peers are matched as IPv4, as for the client address.
        assert_eq!(
            origin_of(&r, &h, "[::ffff:10.0.0.5]:1"),
            (Some("mirror.example.com"), true)
        );
    }

    #[test]
    fn the_authority_and_the_connection_say_where_a_direct_request_was_sent() {
        let r = real_ip("x-forwarded-for", &["10.0.0.0/8"]);
        let h2 = Reached {
            authority: Some("mirror.internal:5000"),
            tls: false,
        };
        // HTTP/2: no Host, the authority is the host.
        let none = HeaderMap::new();
        let o = r.origin(&none, h2, peer("203.0.113.9:1234"));
        assert_eq!((o.host, o.https), (Some("mirror.internal:5000"), false));
        // Present, the authority wins over a Host naming something else.
        let other = headers("host", &["other.example"]);
        assert_eq!(
            r.origin(&other, h2, peer("203.0.113.9:1")).host,
            Some("mirror.internal:5000")
        );
        // An authority that is not one host is no host, even with a good Host beside it.
        for bad in [
            "user@mirror.internal",
            "user:pw@mirror.internal:5000",
            "h:99999",
        ] {
            let a = Reached {
                authority: Some(bad),
                tls: false,
            };
            assert_eq!(
                r.origin(&other, a, peer("203.0.113.9:1")).host,
                None,
                "{bad}"
            );
        }
        // A connection the mirror terminated TLS on is https, whatever the request says.
        let tls = Reached {
            authority: None,
            tls: true,
        };
        let mut h = headers("host", &["mirror.internal"]);
        h.insert("x-forwarded-proto", "http".parse().unwrap());
        let o = r.origin(&h, tls, peer("203.0.113.9:1"));
        assert_eq!((o.host, o.https), (Some("mirror.internal"), true));
        let o = r.origin(&h, Reached::default(), peer("203.0.113.9:1"));
        assert_eq!((o.host, o.https), (Some("mirror.internal"), false));
        // From a trusted proxy its word still wins; without it, the connection's scheme and the
        // request's authority.
        let o = r.origin(&h, tls, peer(PROXY));
        assert_eq!((o.host, o.https), (Some("mirror.internal"), false));
        let mut fwd = HeaderMap::new();
        fwd.insert("x-forwarded-host", "mirror.example.com".parse().unwrap());
        let o = r.origin(&fwd, h2, peer(PROXY));
        assert_eq!((o.host, o.https), (Some("mirror.example.com"), false));
        let o = r.origin(&none, Reached { tls: true, ..h2 }, peer(PROXY));
        assert_eq!((o.host, o.https), (Some("mirror.internal:5000"), true));
    }

    #[test]
    fn forwarded_hosts_that_are_not_one_host_are_ignored() {
        let r = real_ip("x-forwarded-for", &["10.0.0.0/8"]);
        for bad in [
            "evil.example\",realm=\"x",
            "evil.example, mirror.example.com",
            "a b",
            "evil.example/auth",
            "evil.example:",
            "evil.example:99999",
            "evil.example:80:80",
            "2001:db8::1",
            "[2001:db8::1",
            "[not-v6]:80",
            "a..b",
            "",
        ] {
            let mut h = headers("host", &["mirror.internal"]);
            h.insert("x-forwarded-host", bad.parse().unwrap());
            assert_eq!(
                origin_of(&r, &h, PROXY).0,
                Some("mirror.internal"),
                "{bad:?}"
            );
        }
        // Two lines are a list: neither is believed.
        let mut h = headers("x-forwarded-host", &["evil.example", "mirror.example.com"]);
        h.insert("host", "mirror.internal".parse().unwrap());
        assert_eq!(origin_of(&r, &h, PROXY).0, Some("mirror.internal"));
        // Nor is a bad Host used.
        let h = headers("host", &["evil\"x"]);
        assert_eq!(origin_of(&r, &h, PROXY).0, None);
        for good in [
            "mirror.example.com:5000",
            "[::1]:5000",
            "[2001:db8::1]",
            "192.0.2.1",
            "my_mirror",
        ] {
            assert!(is_host(good), "{good}");
        }
    }

    #[test]
    fn settings_are_checked() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(RealIp::new(None, &[]).unwrap(), RealIp::peer_only());
        assert_eq!(RealIp::new(Some(""), &[]).unwrap(), RealIp::peer_only());
        let keys = |r: Result<RealIp, Vec<Problem>>| -> Vec<String> {
            r.unwrap_err().into_iter().map(|(k, _)| k).collect()
        };
        let e = RealIp::new(Some("X-Forwarded-For"), &[]).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, "real_ip_header");
        assert!(e[0].1.contains("trusted_proxies"), "{}", e[0].1);
        assert_eq!(
            keys(RealIp::new(None, &list(&["10.0.0.1"]))),
            ["trusted_proxies"]
        );
        assert_eq!(
            keys(RealIp::new(
                Some("bad header"),
                &list(&["10.0.0.0/8", "10.0.0.0/33", "proxy.local"])
            )),
            ["real_ip_header", "trusted_proxies[1]", "trusted_proxies[2]"]
        );
        assert!(
            RealIp::new(
                Some("X-Real-IP"),
                &list(&["::1", " 127.0.0.1 ", "fc00::/7"])
            )
            .is_ok()
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn trusted() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]
    }

    fn untrusted_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>()
                .prop_filter("not 10/8", |o| o[0] != 10)
                .prop_map(IpAddr::from),
            any::<[u16; 8]>()
                .prop_filter("not fd00::/8, not mapped", |s| {
                    s[0] >> 8 != 0xfd && s[..6] != [0, 0, 0, 0, 0, 0xffff]
                })
                .prop_map(IpAddr::from),
        ]
    }

    fn trusted_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 3]>().prop_map(|o| IpAddr::from([10, o[0], o[1], o[2]])),
            any::<[u16; 7]>().prop_map(|s| {
                IpAddr::from([
                    0xfd00 | (s[0] & 0xff),
                    s[1],
                    s[2],
                    s[3],
                    s[4],
                    s[5],
                    s[6],
                    1,
                ])
            }),
        ]
    }

    /// How a proxy may write an address: bare, with a port, bracketed.
    fn written(ip: IpAddr, style: u8, port: u16) -> String {
        match (ip, style % 3) {
            (IpAddr::V4(v4), 1) => format!("{v4}:{port}"),
            (IpAddr::V6(v6), 1) => format!("[{v6}]:{port}"),
            (IpAddr::V6(v6), 2) => format!("[{v6}]"),
            (ip, _) => ip.to_string(),
        }
    }

    proptest! {
        /// Whatever a client puts in the header (any text, commas, other addresses, trusted
        /// proxies' addresses), the client found behind trusted proxies is the address the first
        /// of them appended.
        #[test]
        fn a_client_cannot_choose_its_address(
            forged in "[ -~]{0,80}",
            client in untrusted_ip(),
            hops in proptest::collection::vec((trusted_ip(), any::<u8>(), any::<u16>()), 0..4),
            style in any::<u8>(),
            port in any::<u16>(),
            peer in trusted_ip(),
        ) {
            let mut entries = vec![forged, written(client, style, port)];
            entries.extend(hops.iter().map(|(ip, s, p)| written(*ip, *s, *p)));
            let value = entries.join(", ");
            prop_assume!(axum::http::HeaderValue::from_str(&value).is_ok());
            let found = rightmost_untrusted(
                std::iter::once(value.as_bytes()),
                false,
                peer,
                &trusted(),
            );
            prop_assert_eq!(found, client);
        }

        /// Whatever a trusted proxy (or a client through it) puts in `X-Forwarded-Host`, the
        /// host a challenge is built from can hold nothing that leaves its quoted string or
        /// names a second value; from an untrusted peer it is the `Host` sent.
        #[test]
        fn a_forwarded_host_cannot_break_out(value in "[ -~]{0,80}", peer in untrusted_ip()) {
            let Ok(v) = axum::http::HeaderValue::from_str(&value) else {
                return Ok(());
            };
            let r = RealIp::new(Some("x-forwarded-for"), &["10.0.0.0/8".into()]).unwrap();
            let mut h = HeaderMap::new();
            h.insert("host", "mirror.internal".parse().unwrap());
            h.insert("x-forwarded-host", v);
            let host = r
                .origin(&h, Reached::default(), Some(SocketAddr::new([10, 0, 0, 1].into(), 1)))
                .host;
            let host = host.unwrap();
            prop_assert!(
                host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b)),
                "{host:?}"
            );
            prop_assert!(host == value.trim() || host == "mirror.internal");
            let from_outside = r.origin(&h, Reached::default(), Some(SocketAddr::new(peer, 1))).host;
            prop_assert_eq!(from_outside, Some("mirror.internal"));
        }

        /// From an untrusted peer the header is never read.
        #[test]
        fn an_untrusted_peer_is_itself(value in "[ -~]{0,80}", peer in untrusted_ip()) {
            let found = rightmost_untrusted(
                std::iter::once(value.as_bytes()),
                false,
                peer,
                &trusted(),
            );
            prop_assert_eq!(found, peer);
        }
    }
}
