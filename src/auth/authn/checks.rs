//! The checks the authenticators' config sections share: durations, timeouts (durations above
//! zero), and the URLs of services credentials are sent to.

use std::time::Duration;

use super::ConfigProblem;

pub(crate) fn parse_duration(
    key: &str,
    value: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<Duration> {
    match humantime::parse_duration(value.trim()) {
        Ok(d) => Some(d),
        Err(e) => {
            problems.push(ConfigProblem::new(
                key,
                format!("{value:?} is not a duration like 30s or 5m: {e}"),
            ));
            None
        }
    }
}

/// Parse the URL of a service we send credentials to: https, or plain http only to a loopback
/// host (a local stand-in), with no credentials, query or fragment.
pub(crate) fn parse_service_url(
    key: &str,
    value: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<url::Url> {
    let u = match url::Url::parse(value.trim()) {
        Ok(u) => u,
        Err(e) => {
            problems.push(ConfigProblem::new(
                key,
                format!("{value:?} is not a URL: {e}"),
            ));
            return None;
        }
    };
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    };
    let ok_scheme = u.scheme() == "https" || (u.scheme() == "http" && loopback);
    if !ok_scheme || u.host().is_none() {
        problems.push(ConfigProblem::new(
            key,
            format!(
                "{value:?}: must be an https URL (plain http only to a loopback address), with a host"
            ),
        ));
        None
    } else if !u.username().is_empty() || u.password().is_some() {
        problems.push(ConfigProblem::new(key, "must not carry credentials"));
        None
    } else if u.query().is_some() || u.fragment().is_some() {
        problems.push(ConfigProblem::new(key, "must not have a query or fragment"));
        None
    } else {
        Some(u)
    }
}

/// A timeout: a duration above zero.
pub(crate) fn parse_timeout(
    key: &str,
    value: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<Duration> {
    let timeout = parse_duration(key, value, problems);
    if timeout.is_some_and(|t| t.is_zero()) {
        problems.push(ConfigProblem::new(key, "must be greater than zero"));
    }
    timeout
}
