//! A real Distribution registry (`docker-registry serve`) on loopback with its request log, and
//! [`Pusher`], which pushes content to it with the OCI push API.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tempfile::TempDir;

use super::{
    BigBlob, Descriptor, Image, Index, OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST, build_docker_image,
    build_index, build_oci_image, client, free_port, q, sha256_digest, tail, wait_http_ok,
};

/// Pushes content with the OCI push API (POST upload, monolithic PUT, manifest PUT).
#[derive(Clone)]
pub struct Pusher {
    pub client: reqwest::Client,
    pub base: String,
    pub auth: Option<(String, String)>,
}

impl Pusher {
    pub fn new(base: &str, auth: Option<(String, String)>) -> Self {
        Pusher {
            client: client(),
            base: base.trim_end_matches('/').to_string(),
            auth,
        }
    }

    fn req(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, url);
        match &self.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    async fn start_upload(&self, name: &str) -> String {
        let resp = self
            .req(
                reqwest::Method::POST,
                &format!("{}/v2/{}/blobs/uploads/", self.base, name),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202, "start upload for {name}");
        let loc = resp.headers()["location"].to_str().unwrap().to_string();
        if loc.starts_with('/') {
            format!("{}{}", self.base, loc)
        } else {
            loc
        }
    }

    fn with_digest(loc: &str, digest: &str) -> String {
        let sep = if loc.contains('?') { '&' } else { '?' };
        format!("{loc}{sep}digest={digest}")
    }

    /// Upload `body` (`len` bytes, digest `digest`) as a blob of `name`: one monolithic PUT.
    async fn upload(&self, name: &str, digest: &str, len: u64, body: reqwest::Body) {
        let loc = self.start_upload(name).await;
        let resp = self
            .req(reqwest::Method::PUT, &Self::with_digest(&loc, digest))
            .header("content-type", "application/octet-stream")
            .header("content-length", len)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert_eq!(
            status,
            201,
            "blob put for {name}: {}",
            resp.text().await.unwrap_or_default()
        );
    }

    /// Push a blob held in memory; returns its digest.
    pub async fn push_blob(&self, name: &str, data: Bytes) -> String {
        let digest = sha256_digest(&data);
        self.upload(name, &digest, data.len() as u64, data.into())
            .await;
        digest
    }

    /// Push a [`BigBlob`] by streaming it (never held in memory); returns its digest.
    pub async fn push_big_blob(&self, name: &str, blob: &BigBlob) -> String {
        let digest = blob.digest();
        let body = reqwest::Body::wrap_stream(blob.stream());
        self.upload(name, &digest, blob.size, body).await;
        digest
    }

    /// PUT a manifest under `reference` (tag or digest); returns the registry's digest.
    pub async fn push_manifest(
        &self,
        name: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let resp = self
            .req(
                reqwest::Method::PUT,
                &format!("{}/v2/{}/manifests/{}", self.base, name, reference),
            )
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            status,
            201,
            "manifest put {name}:{reference}: {}",
            resp.text().await.unwrap_or_default()
        );
        let digest = digest.expect("Docker-Content-Digest on manifest put");
        assert_eq!(digest, sha256_digest(bytes));
        digest
    }

    /// Push a built image (blobs, then manifest under `tag`).
    pub async fn push_image(&self, name: &str, tag: &str, img: &Image) -> Image {
        for d in img.all_blobs() {
            if let Some(data) = img.blobs.get(&d.digest) {
                self.push_blob(name, data.clone()).await;
            }
        }
        self.push_manifest(name, tag, &img.media_type, &img.manifest)
            .await;
        let mut img = img.clone();
        img.name = name.to_string();
        img.tag = tag.to_string();
        img
    }

    pub async fn push_oci_image(&self, name: &str, tag: &str, seed: u64) -> Image {
        self.push_image(name, tag, &build_oci_image(seed)).await
    }

    pub async fn push_docker_image(&self, name: &str, tag: &str, seed: u64) -> Image {
        self.push_image(name, tag, &build_docker_image(seed)).await
    }

    /// Push a two-platform OCI index: children by digest, then the index under `tag`.
    pub async fn push_index(&self, name: &str, tag: &str, seed: u64) -> Index {
        let mut idx = build_index(seed);
        for child in idx.children.iter_mut() {
            let digest = child.digest.clone();
            *child = self.push_image(name, &digest, child).await;
            child.tag = String::new();
        }
        self.push_manifest(name, tag, &idx.media_type, &idx.manifest)
            .await;
        idx.name = name.to_string();
        idx.tag = tag.to_string();
        idx
    }

    /// An OCI image whose only layer is a [`BigBlob`] of `size` bytes, pushed by streaming.
    /// The returned image has no bytes for the big layer in `blobs`.
    pub async fn push_big_image(
        &self,
        name: &str,
        tag: &str,
        size: u64,
        seed: u64,
    ) -> (Image, BigBlob) {
        let big = BigBlob::new(seed, size);
        let digest = self.push_big_blob(name, &big).await;
        let layer = Descriptor {
            media_type: OCI_LAYER_TAR.to_string(),
            digest,
            size,
        };
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
        }))
        .unwrap();
        let config_d = Descriptor::of(OCI_CONFIG, &config);
        self.push_blob(name, Bytes::from(config.clone())).await;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_d.json(),
            "layers": [layer.json()],
        }))
        .unwrap();
        let digest = self.push_manifest(name, tag, OCI_MANIFEST, &manifest).await;
        let mut blobs = HashMap::new();
        blobs.insert(config_d.digest.clone(), Bytes::from(config));
        (
            Image {
                name: name.to_string(),
                tag: tag.to_string(),
                media_type: OCI_MANIFEST.to_string(),
                digest,
                manifest,
                config: config_d,
                layers: vec![layer],
                blobs,
            },
            big,
        )
    }
}

#[derive(Clone, Default)]
pub struct RegistryOpts {
    /// htpasswd (Basic) auth with this user and password.
    pub auth: Option<(String, String)>,
    /// Run Distribution as a pull-through proxy of this URL.
    pub proxy_remote: Option<String>,
    /// Distribution's token auth (`auth: token:`), e.g. with ocimirror as the token server.
    pub token: Option<RegistryTokenAuth>,
    /// Accept pushed manifests whose descriptors carry `urls` (foreign / non-distributable
    /// layers, as Docker Hub does for Windows images); Distribution refuses them by default.
    pub allow_urls: bool,
    /// Serve HTTPS with this PEM certificate and key (Distribution's `http.tls`).
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Distribution's `auth.token` section.
#[derive(Clone)]
pub struct RegistryTokenAuth {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    /// PEM certificates whose keys sign the tokens Distribution accepts.
    pub rootcertbundle: PathBuf,
}

/// A real Distribution registry on 127.0.0.1, killed on drop.
pub struct Registry {
    child: Option<Child>,
    dir: TempDir,
    pub port: u16,
    root: PathBuf,
    log: PathBuf,
    pub auth: Option<(String, String)>,
}

impl Registry {
    pub async fn start(opts: RegistryOpts) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("ocim-registry")
            .tempdir()
            .unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(&root).unwrap();
        let port = free_port();
        let log = dir.path().join("registry.log");
        let child = Self::launch(dir.path(), &root, port, &opts, &log, "config.yml").await;
        Registry {
            child: Some(child),
            dir,
            port,
            root,
            log,
            auth: opts.auth,
        }
    }

    /// Stop the registry and start it again on the same root directory (the content stays) with
    /// new options, on a new port and with a new log.
    pub async fn restart(&mut self, opts: RegistryOpts) {
        self.stop();
        let n = fs::read_dir(self.dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("config"))
            })
            .count();
        self.port = free_port();
        self.log = self.dir.path().join(format!("registry-{n}.log"));
        let child = Self::launch(
            self.dir.path(),
            &self.root,
            self.port,
            &opts,
            &self.log,
            &format!("config-{n}.yml"),
        )
        .await;
        self.child = Some(child);
        self.auth = opts.auth;
    }

    async fn launch(
        dir: &Path,
        root: &Path,
        port: u16,
        opts: &RegistryOpts,
        log: &Path,
        config_name: &str,
    ) -> Child {
        let mut cfg = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: ocimirror-test-secret\n",
            root = root.display()
        );
        if let Some((cert, key)) = &opts.tls {
            cfg += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                q(&cert.display().to_string()),
                q(&key.display().to_string())
            );
        }
        if let Some((user, pass)) = &opts.auth {
            let out = Command::new("htpasswd")
                .args(["-nbB", user, pass])
                .output()
                .expect("htpasswd");
            assert!(out.status.success(), "htpasswd failed");
            let htfile = dir.join("htpasswd");
            fs::write(&htfile, &out.stdout).unwrap();
            cfg += &format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                htfile.display()
            );
        }
        if let Some(t) = &opts.token {
            assert!(opts.auth.is_none(), "htpasswd and token auth are exclusive");
            cfg += &format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                q(&t.realm),
                q(&t.service),
                q(&t.issuer),
                q(&t.rootcertbundle.display().to_string())
            );
        }
        if let Some(remote) = &opts.proxy_remote {
            cfg += &format!("proxy:\n  remoteurl: {remote}\n");
        }
        if opts.allow_urls {
            cfg += "validation:\n  manifests:\n    urls:\n      allow:\n        - ^https?://\n";
        }
        let cfg_path = dir.join(config_name);
        fs::write(&cfg_path, cfg).unwrap();
        let logf = fs::File::create(log).unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn docker-registry");
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        wait_http_ok(
            &format!("{scheme}://127.0.0.1:{port}/v2/"),
            &[200, 401],
            &mut child,
            log,
            "docker-registry",
        )
        .await;
        child
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn hostport(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    /// Distribution's `rootdirectory` (holds `docker/registry/v2`).
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn pusher(&self) -> Pusher {
        Pusher::new(&self.url(), self.auth.clone())
    }
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// SIGSTOP: the registry keeps its port and answers nothing until [`Registry::resume`] (an
    /// upstream holding a response, with the order of events fixed rather than timed).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Registry::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("registry running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} docker-registry");
    }

    /// Kill the registry process, keeping its root directory.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (method, uri) of every completed request so far, from the registry's log.
    /// Waits a little first: Distribution logs after the response is written.
    pub async fn requests(&self) -> Vec<(String, String)> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        parse_registry_log(&self.log_text())
    }

    /// Completed requests with this method (empty = any) whose URI contains `path_substring`.
    pub async fn count_requests(&self, method: &str, path_substring: &str) -> usize {
        self.requests()
            .await
            .iter()
            .filter(|(m, u)| (method.is_empty() || m == method) && u.contains(path_substring))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- registry log tail ({}) ----\n{}",
                self.log.display(),
                tail(&self.log, 30)
            );
        }
        self.stop();
    }
}

/// Value of `key=` in a logrus text line (quoted or bare).
fn logfmt_value<'a>(line: &'a str, key: &str) -> Option<String> {
    let pat = format!(" {key}=");
    let start = line.find(&pat)? + pat.len();
    let rest: &'a str = &line[start..];
    if let Some(q) = rest.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = q.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                }
                '"' => return Some(out),
                c => out.push(c),
            }
        }
        Some(out)
    } else {
        Some(rest.split(' ').next().unwrap_or("").to_string())
    }
}

/// Parse Distribution's "response completed" log lines into (method, uri).
pub fn parse_registry_log(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| l.contains("msg=\"response completed"))
        .filter_map(|l| {
            Some((
                logfmt_value(l, "http.request.method")?,
                logfmt_value(l, "http.request.uri")?,
            ))
        })
        .collect()
}
