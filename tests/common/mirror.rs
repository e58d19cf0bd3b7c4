//! The ocimirror binary under test: [`MirrorOpts`] renders its YAML config, [`Mirror`] runs it
//! (start, restart, SIGTERM, SIGKILL, config rewrite for reloads) and reads its metrics; the
//! binary's other commands (`config check`, `keygen`, `hash-password`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{ACCEPT_MANIFESTS, client, closed_url, free_port, q, tail, wait_http_ok};

/// Options for one mirror run. Every run gets an explicit upstream URL (a closed loopback port by
/// default), so no test can ever reach the default Docker Hub upstream.
#[derive(Clone, Default)]
pub struct MirrorOpts {
    pub upstream_url: Option<String>,
    pub mode: Option<String>,
    /// Extra `key: value` lines under `upstream:` (value is raw YAML).
    pub upstream: Vec<(String, String)>,
    pub storage_root: Option<PathBuf>,
    pub read_only: bool,
    /// Extra top-level YAML appended verbatim.
    pub extra: String,
    pub env: Vec<(String, String)>,
    /// Run without a config file: `serve --listen .. --data-dir .. <these args>`.
    pub cli_only: Option<Vec<String>>,
    /// Extra `serve` arguments after `--config <file>` (e.g. `--role auth`).
    pub args: Vec<String>,
    /// Lines of the `storage:` section (indented two spaces, e.g. from [`S3Server::storage_yaml`])
    /// in place of the default filesystem backend; `read_only` is still appended.
    pub storage_yaml: Option<String>,
}

impl MirrorOpts {
    pub fn upstream(url: &str) -> Self {
        MirrorOpts {
            upstream_url: Some(url.to_string()),
            ..Default::default()
        }
    }
    pub fn up(mut self, key: &str, raw_value: &str) -> Self {
        self.upstream.retain(|(k, _)| k != key);
        self.upstream.push((key.to_string(), raw_value.to_string()));
        self
    }
    pub fn tag_ttl(self, ttl: &str) -> Self {
        self.up("tag_ttl", ttl)
    }
    pub fn mode(mut self, mode: &str) -> Self {
        self.mode = Some(mode.to_string());
        self
    }
    pub fn url(mut self, url: &str) -> Self {
        self.upstream_url = Some(url.to_string());
        self
    }
    pub fn storage_root(mut self, root: &Path) -> Self {
        self.storage_root = Some(root.to_path_buf());
        self
    }
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }
    /// No config file: only `--listen`, `--data-dir` and `args` on the command line.
    pub fn cli(args: &[&str]) -> Self {
        MirrorOpts {
            cli_only: Some(args.iter().map(|a| a.to_string()).collect()),
            ..Default::default()
        }
    }
    pub fn extra(mut self, yaml: &str) -> Self {
        self.extra.push_str(yaml);
        if !self.extra.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }
    /// Append an extra `serve` argument (config-file runs only).
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }
    /// Replace the filesystem storage section with these lines (see [`MirrorOpts::storage_yaml`]).
    pub fn storage_yaml(mut self, yaml: &str) -> Self {
        let mut y = yaml.to_string();
        if !y.ends_with('\n') {
            y.push('\n');
        }
        self.storage_yaml = Some(y);
        self
    }
    /// The upstream's `username` and `password`.
    pub fn login(self, user: &str, password: &str) -> Self {
        self.up("username", &q(user)).up("password", &q(password))
    }
    /// Short upstream timeouts, for tests with a misbehaving upstream.
    pub fn short_timeouts(self) -> Self {
        self.up("connect_timeout", "1s")
            .up("first_byte_timeout", "1s")
            .up("read_timeout", "2s")
    }
}

/// The ocimirror binary under test. Killed on drop.
pub struct Mirror {
    child: Option<Child>,
    dir: TempDir,
    pub port: u16,
    pub opts: MirrorOpts,
    run: usize,
    log: PathBuf,
}

impl Mirror {
    pub async fn start(opts: MirrorOpts) -> Mirror {
        let dir = tempfile::Builder::new()
            .prefix("ocim-mirror")
            .tempdir()
            .unwrap();
        let mut m = Mirror {
            child: None,
            log: dir.path().join("mirror-0.log"),
            dir,
            port: 0,
            opts,
            run: 0,
        };
        m.spawn().await;
        m
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn storage_root(&self) -> PathBuf {
        self.opts
            .storage_root
            .clone()
            .unwrap_or_else(|| self.data_dir().join("storage"))
    }
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn hostport(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Wait (up to 20 s) until `cond` holds of the log: lines reach the file from a thread of
    /// the mirror's own, a moment after what they report.
    pub async fn wait_log(&self, what: &str, cond: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond(&self.log_text()) {
            assert!(
                Instant::now() < deadline,
                "the log never showed {what}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    /// The config file the running process was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join(format!("config-{}.yml", self.run))
    }
    /// Rewrite the running process's config file from `opts` (same port and data dir), without
    /// restarting it: for reload tests.
    pub fn rewrite_config(&mut self, opts: MirrorOpts) {
        self.opts = opts;
        fs::write(self.config_path(), self.config_yaml()).unwrap();
    }

    fn config_yaml(&self) -> String {
        self.render_config(&self.opts)
    }

    /// The YAML this mirror would be configured with under `o` (same port and data dir).
    pub fn render_config(&self, o: &MirrorOpts) -> String {
        let mut y = format!(
            "listen: {}\ndata_dir: {}\nlog:\n  level: info\n  format: text\n",
            q(&format!("127.0.0.1:{}", self.port)),
            q(&self.data_dir().display().to_string()),
        );
        if let Some(mode) = &o.mode {
            y += &format!("mode: {mode}\n");
        }
        match &o.storage_yaml {
            Some(section) => {
                y += &format!("storage:\n{section}  read_only: {}\n", o.read_only);
            }
            None => {
                y += &format!(
                    "storage:\n  backend: filesystem\n  filesystem:\n    root: {}\n  read_only: {}\n",
                    q(&self.storage_root().display().to_string()),
                    o.read_only
                );
            }
        }
        let url = o.upstream_url.clone().unwrap_or_else(closed_url);
        y += &format!("upstream:\n  url: {}\n", q(&url));
        for (k, v) in &o.upstream {
            y += &format!("  {k}: {v}\n");
        }
        y += &o.extra;
        y
    }

    async fn spawn(&mut self) {
        self.port = free_port();
        self.log = self.dir.path().join(format!("mirror-{}.log", self.run));
        let cfg = self.config_path();
        fs::create_dir_all(self.data_dir()).unwrap();
        fs::write(&cfg, self.config_yaml()).unwrap();
        let logf = fs::File::create(&self.log).unwrap();
        let mut cmd = Command::new(ocimirror_bin());
        cmd.arg("serve");
        match &self.opts.cli_only {
            None => {
                cmd.arg("--config").arg(&cfg).args(&self.opts.args);
            }
            Some(args) => {
                cmd.arg("--listen")
                    .arg(self.hostport())
                    .arg("--data-dir")
                    .arg(self.data_dir())
                    .args(args);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        for (k, _) in std::env::vars() {
            if k.starts_with("OCIMIRROR_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn ocimirror");
        let url = format!("{}/readyz", self.url());
        let log = self.log.clone();
        wait_http_ok(&url, &[200], &mut child, &log, "ocimirror").await;
        self.child = Some(child);
    }

    /// SIGKILL, no waiting for anything but the exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (up to 30s, then SIGKILL and panic). Returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("mirror running");
        let st = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("ocimirror did not exit within 30s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kill and start again with the same data dir (and a new port), optionally with new options.
    pub async fn restart(&mut self, opts: Option<MirrorOpts>) {
        self.kill();
        if let Some(o) = opts {
            self.opts = o;
        }
        self.run += 1;
        self.spawn().await;
    }

    pub async fn metrics(&self) -> String {
        let r = client()
            .get(format!("{}/metrics", self.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "/metrics");
        r.text().await.unwrap()
    }

    /// Sum of the samples of `name` whose label set contains every string of `labels`.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_sum(&self.metrics().await, name, labels)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        client().get(format!("{}{}", self.url(), path))
    }
    pub fn head(&self, path: &str) -> reqwest::RequestBuilder {
        client().head(format!("{}{}", self.url(), path))
    }
    /// A GET of `path` accepting every manifest type, as a pulling client sends it.
    pub fn get_accepting(&self, path: &str) -> reqwest::RequestBuilder {
        self.get(path).header("accept", ACCEPT_MANIFESTS)
    }
    pub fn get_manifest(&self, name: &str, reference: &str) -> reqwest::RequestBuilder {
        self.get_accepting(&format!("/v2/{name}/manifests/{reference}"))
    }
    pub fn get_blob(&self, name: &str, digest: &str) -> reqwest::RequestBuilder {
        self.get(&format!("/v2/{name}/blobs/{digest}"))
    }

    /// Ask for `name:reference` until it is served (up to 30 s: a bound on a hang, not a
    /// measure) and return that answer; while it is not, every answer must have status
    /// `meanwhile`, when given.
    pub async fn manifest_once_served(
        &self,
        name: &str,
        reference: &str,
        meanwhile: Option<u16>,
        what: &str,
    ) -> reqwest::Response {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.get_manifest(name, reference).send().await.unwrap();
            if r.status().as_u16() == 200 {
                return r;
            }
            if let Some(status) = meanwhile {
                assert_eq!(r.status().as_u16(), status, "{what}");
            }
            assert!(Instant::now() < deadline, "{what}: still {}", r.status());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- ocimirror log tail ({}) ----\n{}",
                self.log.display(),
                tail(&self.log, 40)
            );
        }
        self.kill();
    }
}

/// Prometheus text: sum of `name` samples whose label block contains all `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(i) => match line[i..].find('}') {
                Some(j) => (&line[..i + j + 1], &line[i + j + 1..]),
                None => continue,
            },
            None => match line.split_once(char::is_whitespace) {
                Some((s, r)) => (s, r),
                None => continue,
            },
        };
        let metric_name = series.split('{').next().unwrap();
        if metric_name != name || !labels.iter().all(|l| series.contains(l)) {
            continue;
        }
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            sum += v;
        }
    }
    sum
}

/// `ocimirror config check FILE`: whether it passed, and what it said on stderr.
pub fn config_check(file: &Path) -> (bool, String) {
    let out = Command::new(ocimirror_bin())
        .args(["config", "check"])
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ocimirror config check` of `yaml`, written to a file of its own: (passed, stderr).
pub fn config_check_yaml(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, yaml).unwrap();
    config_check(&file)
}

/// `ocimirror keygen` into `dir`: (key path, certificate path).
pub fn ocimirror_keygen(dir: &std::path::Path) -> (String, String) {
    let key = dir.join("token.key");
    let cert = dir.join("token.crt");
    let out = Command::new(ocimirror_bin())
        .args(["keygen", "--key"])
        .arg(&key)
        .arg("--certificate")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (key.display().to_string(), cert.display().to_string())
}

/// A token-signing key and certificate written by `ocimirror keygen` into a directory of their
/// own, removed on drop.
pub struct TokenKeys {
    _dir: Option<tempfile::TempDir>,
    pub key: std::path::PathBuf,
    pub cert: std::path::PathBuf,
}

impl TokenKeys {
    pub fn generate() -> TokenKeys {
        let dir = tempfile::Builder::new()
            .prefix("ocim-keys")
            .tempdir()
            .unwrap();
        let (key, cert) = ocimirror_keygen(dir.path());
        TokenKeys {
            _dir: Some(dir),
            key: key.into(),
            cert: cert.into(),
        }
    }

    /// A pair made elsewhere (and kept there).
    pub fn from_files(key: std::path::PathBuf, cert: std::path::PathBuf) -> TokenKeys {
        TokenKeys {
            _dir: None,
            key,
            cert,
        }
    }
}

/// `ocimirror hash-password --cost 4` of `pw`.
pub fn ocimirror_hash_password(pw: &str) -> String {
    let mut child = Command::new(ocimirror_bin())
        .args(["hash-password", "--cost", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pw.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "hash-password: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The ocimirror binary the tests run: the one cargo built for this test run, or the one
/// `OCIMIRROR_TEST_BIN` names (to run the whole suite against a release build).
pub fn ocimirror_bin() -> PathBuf {
    std::env::var_os("OCIMIRROR_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ocimirror")))
}
