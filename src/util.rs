//! Small conversions several modules need and none owns: Unix seconds, byte sizes for people,
//! listen addresses, and the test environment's switch that turns a missing real part into a
//! failure. Imports nothing from ocimirror, so any module may use it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, negative before it (a JWT's `iat`/`exp`, a certificate's
/// validity and the expiry runner's stamps all count this way).
pub fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs().min(i64::MAX as u64) as i64,
        Err(e) => -(e.duration().as_secs().min(i64::MAX as u64) as i64),
    }
}

/// Bytes for people: `512 B`, `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

/// A listen address: `host:port`, or `:port` for all interfaces (as Distribution's config
/// writes it); the error names `port` in its examples.
pub fn parse_listen(s: &str, port: u16) -> Result<SocketAddr, String> {
    let s = s.trim();
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_owned()
    };
    if let Ok(a) = full.parse::<SocketAddr>() {
        return Ok(a);
    }
    // Host names (localhost:5000) resolve locally; this does not reach the network for them.
    full.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("{s:?} is not an address like 0.0.0.0:{port} or :{port}"))
}

/// Whether `OCIMIRROR_REQUIRE_ALL` asks tests to fail rather than skip when a real part (a
/// server, a client) is not installed. The test script sets it.
pub fn require_all() -> bool {
    std::env::var("OCIMIRROR_REQUIRE_ALL").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether the real part `what` is there (`found`); when not, a skip message, or a panic under
/// `OCIMIRROR_REQUIRE_ALL`. `install` says how to get it.
pub fn tool_or_skip(found: bool, what: &str, install: &str) -> bool {
    if !found {
        assert!(
            !require_all(),
            "OCIMIRROR_REQUIRE_ALL is set but {what} is not installed ({install})"
        );
        eprintln!(
            "SKIPPED: this test needs {what} ({install}); set OCIMIRROR_REQUIRE_ALL=1 to make \
             this a failure"
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(unix_secs(UNIX_EPOCH + Duration::from_secs(90)), 90);
        assert_eq!(unix_secs(UNIX_EPOCH - Duration::from_secs(90)), -90);
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
