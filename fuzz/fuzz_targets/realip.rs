//! The client address behind proxies (`X-Forwarded-For`, `Forwarded`): whatever a client sends,
//! once a trusted proxy has appended the address it saw, that address is the client; from an
//! untrusted peer the header is never read.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use ocimirror::auth::realip::RealIp;

fuzz_target!(|input: (&[u8], bool)| {
    let (forged, forwarded) = input;
    let (name, appended) = if forwarded {
        ("forwarded", "for=\"[2001:db8::77]:4711\"")
    } else {
        ("x-forwarded-for", "192.0.2.77")
    };
    let trusted = vec!["10.0.0.0/8".to_owned(), "fd00::/8".to_owned()];
    let r = RealIp::new(Some(name), &trusted).unwrap();
    let proxy: SocketAddr = "10.0.0.1:40000".parse().unwrap();
    let Ok(v) = HeaderValue::from_bytes(forged) else {
        return;
    };
    let mut h = HeaderMap::new();
    h.insert(name, v);
    assert!(r.client(&h, Some(proxy)).is_some());
    let outsider: SocketAddr = "198.51.100.1:1".parse().unwrap();
    assert_eq!(r.client(&h, Some(outsider)), Some(outsider.ip()));
    // What the trusted proxy appends decides, whatever came before it.
    let mut with = forged.to_vec();
    with.extend_from_slice(b", ");
    with.extend_from_slice(appended.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&with) {
        h.insert(name, v);
        let want: IpAddr = if forwarded {
            "2001:db8::77".parse().unwrap()
        } else {
            "192.0.2.77".parse().unwrap()
        };
        assert_eq!(r.client(&h, Some(proxy)), Some(want));
    }
});
