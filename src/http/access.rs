//! The access log: one line per `/v2` request, in the format of the other log lines (text or
//! JSON, target `access`, filtered like them), formatted on a thread of its own. A request only
//! hands its line over: formatting it through `tracing` on the request's thread was most of the
//! logging cost of a warm manifest GET. Without [`install`] (the library used in-process), the
//! line goes through `tracing` as any other.

use std::io::Write;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, SystemTime};

use axum::http::Method;
use serde::Serialize;

use super::truncate;
use crate::auth::realip::Shown;

/// Lines waiting for the formatter; a request waits for room when it is full (never lossy, as
/// the other log lines).
const WAITING: usize = 4096;
/// Lines formatted into one write.
const BATCH_BYTES: usize = 64 * 1024;
/// How long the formatter lets lines gather after a write. A request that finds it waiting for
/// a line wakes it (a system call and a switch of threads); under load it is mostly asleep
/// here instead, and lines are queued without waking anyone.
const GATHER: Duration = Duration::from_millis(2);

/// One request as the access log shows it.
pub struct Line {
    pub id: String,
    pub client: Option<IpAddr>,
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub ms: u64,
}

/// How lines are written: the other log lines' format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Text { ansi: bool },
    Json,
}

static SINK: OnceLock<SyncSender<(SystemTime, Line)>> = OnceLock::new();

/// Format access lines on their own thread into `out` (the log's writer), as `style`. Once per
/// process; later calls are ignored.
pub fn install(out: impl Write + Send + 'static, style: Style) -> std::io::Result<()> {
    let (tx, rx) = std::sync::mpsc::sync_channel(WAITING);
    std::thread::Builder::new()
        .name("ocimirror-access".into())
        .spawn(move || run(rx, out, style))?;
    let _ = SINK.set(tx);
    Ok(())
}

/// Log `line`, if the log filter lets `access` lines through.
pub fn log(line: Line) {
    if !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return;
    }
    match SINK.get() {
        Some(tx) => {
            let _ = tx.send((SystemTime::now(), line));
        }
        None => tracing::info!(
            target: "access",
            request_id = line.id,
            client = %Shown(line.client),
            method = %line.method,
            path = %truncate(&line.path),
            status = line.status,
            ms = line.ms,
            "request"
        ),
    }
}

fn run(rx: Receiver<(SystemTime, Line)>, mut out: impl Write, style: Style) {
    let mut buf = Vec::with_capacity(BATCH_BYTES);
    while let Ok((at, line)) = rx.recv() {
        buf.clear();
        format(&mut buf, &line, Some(at), style);
        // Whatever else is waiting leaves in the same write.
        while let Ok((at, line)) = rx.try_recv() {
            format(&mut buf, &line, Some(at), style);
            if buf.len() >= BATCH_BYTES {
                let _ = out.write_all(&buf);
                buf.clear();
            }
        }
        if !buf.is_empty() {
            let _ = out.write_all(&buf);
        }
        std::thread::sleep(GATHER);
    }
}

#[derive(Serialize)]
struct JsonLine<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
    level: &'static str,
    fields: JsonFields<'a>,
    target: &'static str,
}

#[derive(Serialize)]
struct JsonFields<'a> {
    message: &'static str,
    request_id: &'a str,
    client: String,
    method: &'a str,
    path: &'a str,
    status: u16,
    ms: u64,
}

/// `line` as the log's formatter writes an event, stamped `at` (`None`: no time).
fn format(buf: &mut Vec<u8>, line: &Line, at: Option<SystemTime>, style: Style) {
    let ts = at.map(|t| humantime::format_rfc3339_micros(t).to_string());
    let path = truncate(&line.path);
    let client = Shown(line.client);
    match style {
        Style::Json => {
            let json = JsonLine {
                timestamp: ts,
                level: "INFO",
                fields: JsonFields {
                    message: "request",
                    request_id: &line.id,
                    client: client.to_string(),
                    method: line.method.as_str(),
                    path,
                    status: line.status,
                    ms: line.ms,
                },
                target: "access",
            };
            if serde_json::to_writer(&mut *buf, &json).is_ok() {
                buf.push(b'\n');
            }
        }
        Style::Text { ansi } => {
            let (dim, italic, green, reset) = if ansi {
                ("\x1b[2m", "\x1b[3m", "\x1b[32m", "\x1b[0m")
            } else {
                ("", "", "", "")
            };
            if let Some(ts) = ts {
                let _ = write!(buf, "{dim}{ts}{reset} ");
            }
            let _ = writeln!(
                buf,
                "{green} INFO{reset} {dim}access{reset}{dim}:{reset} request \
                 {italic}request_id{reset}{dim}={reset}{:?} \
                 {italic}client{reset}{dim}={reset}{client} \
                 {italic}method{reset}{dim}={reset}{} \
                 {italic}path{reset}{dim}={reset}{path} \
                 {italic}status{reset}{dim}={reset}{} \
                 {italic}ms{reset}{dim}={reset}{}",
                line.id, line.method, line.status, line.ms
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(path: String) -> Line {
        Line {
            id: "f3a052c9-17".into(),
            client: Some("192.0.2.7".parse().unwrap()),
            method: Method::GET,
            path,
            status: 200,
            ms: 3,
        }
    }

    /// What the log's own formatter writes for the same line, logged through `tracing` (no
    /// formatter thread is installed in tests).
    fn through_tracing(l: Line, style: Style) -> String {
        let out = Captured::default();
        let writer = {
            let out = out.clone();
            move || out.clone()
        };
        let builder = tracing_subscriber::fmt().with_writer(writer).without_time();
        let dispatch = match style {
            Style::Json => tracing::Dispatch::new(builder.json().finish()),
            Style::Text { ansi } => tracing::Dispatch::new(builder.with_ansi(ansi).finish()),
        };
        tracing::dispatcher::with_default(&dispatch, || log(l));
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn lines_are_written_as_the_other_log_lines_are() {
        let long = format!("/v2/{}/manifests/latest", "a/".repeat(200));
        for path in ["/v2/library/alpine/manifests/latest".to_owned(), long] {
            let l = line(path);
            for style in [
                Style::Json,
                Style::Text { ansi: false },
                Style::Text { ansi: true },
            ] {
                let mut ours = Vec::new();
                format(&mut ours, &l, None, style);
                let ours = String::from_utf8(ours).unwrap();
                assert_eq!(
                    ours,
                    through_tracing(line(l.path.clone()), style),
                    "{style:?}"
                );
            }
        }
    }

    #[test]
    fn a_stamped_line_carries_the_time_and_the_installed_sink_writes_lines() {
        let mut stamped = Vec::new();
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_500_000_000_123_456);
        format(&mut stamped, &line("/v2/".into()), Some(at), Style::Json);
        let v: serde_json::Value = serde_json::from_slice(&stamped).unwrap();
        assert_eq!(v["timestamp"], "2017-07-14T02:40:00.123456Z");
        assert_eq!(v["fields"]["request_id"], "f3a052c9-17");
        assert_eq!(v["fields"]["status"], 200);

        let out = Captured::default();
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let runner = {
            let out = out.clone();
            std::thread::spawn(move || run(rx, out, Style::Text { ansi: false }))
        };
        let at = SystemTime::UNIX_EPOCH;
        tx.send((at, line("/v2/a".into()))).unwrap();
        tx.send((at, line("/v2/b".into()))).unwrap();
        drop(tx);
        runner.join().unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].ends_with("path=/v2/a status=200 ms=3"), "{text}");
        // Stamped when the request handed the line over, not when it was written.
        assert!(
            lines[0].starts_with("1970-01-01T00:00:00.000000Z  INFO"),
            "{text}"
        );
        assert!(
            lines[1].contains(" INFO access: request request_id=\"f3a052c9-17\""),
            "{text}"
        );
    }
}
