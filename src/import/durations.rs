//! Go durations as Distribution and docker_auth read them, and durations as ocimirror's config
//! writes them.

use std::time::Duration;

use serde_json::Value;

/// A Go duration as Distribution and docker_auth read it: `1h30m`, `300ms`, `1.5h`; a bare
/// number is nanoseconds.
pub fn go_duration(v: &Value) -> Result<Duration, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_nanos)
            .ok_or_else(|| format!("{n} is not a duration")),
        Value::String(s) => parse_go_duration(s.trim()),
        other => Err(format!("{other} is not a duration")),
    }
}

fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 168h or 1h30m");
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_nanos(n));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_len);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = tail;
    }
    Ok(Duration::from_secs_f64(total))
}

/// A duration as ocimirror's config writes it: `168h`, `90m`, `30s`, `500ms`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let d = |s: &str| go_duration(&Value::String(s.into())).unwrap();
        assert_eq!(d("168h"), Duration::from_secs(168 * 3600));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("2h45m0s"), Duration::from_secs(9900));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d("300ms"), Duration::from_millis(300));
        assert_eq!(d("10µs"), Duration::from_micros(10));
        assert_eq!(
            go_duration(&Value::from(1_000_000_000u64)).unwrap(),
            Duration::from_secs(1)
        );
        assert!(go_duration(&Value::String("a week".into())).is_err());
        assert!(go_duration(&Value::String("5 m".into())).is_err());
        assert_eq!(format_duration(Duration::from_secs(168 * 3600)), "168h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(5400)), "90m");
        assert_eq!(format_duration(Duration::from_millis(10)), "10ms");
        // What the config loader accepts.
        for s in ["168h", "90s", "90m", "10ms"] {
            humantime::parse_duration(s).unwrap();
        }
    }
}
