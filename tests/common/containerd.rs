//! Client tools run for real: [`Containerd`], a containerd daemon with its own root, state and
//! socket, driven with `ctr`; [`runnable_image`], an image runtimes can unpack; and the small
//! checks of what the machine has (`have`, `is_root`) and [`run`] (a command that must succeed).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Whether containerd can run here (containerd and ctr installed, run as root): `false` skips
/// the test, unless `OCIMIRROR_REQUIRE_ALL`.
pub fn containerd_runs() -> bool {
    super::tool_or_skip(
        have("containerd") && have("ctr") && is_root(),
        "containerd and ctr, run as root",
        "apt-get install containerd",
    )
}

pub fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A tar archive holding one file (ustar, as container runtimes unpack it).
pub fn tar_with(name: &str, content: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    let field = |h: &mut [u8; 512], at: usize, v: &[u8]| h[at..at + v.len()].copy_from_slice(v);
    field(&mut h, 0, name.as_bytes());
    field(&mut h, 100, b"0000644\0");
    field(&mut h, 108, b"0000000\0");
    field(&mut h, 116, b"0000000\0");
    field(&mut h, 124, format!("{:011o}\0", content.len()).as_bytes());
    field(&mut h, 136, b"00000000000\0");
    field(&mut h, 148, b"        ");
    h[156] = b'0';
    field(&mut h, 257, b"ustar\0");
    field(&mut h, 263, b"00");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    field(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    let mut t = h.to_vec();
    t.extend_from_slice(content);
    t.resize(t.len().div_ceil(512) * 512, 0);
    t.extend_from_slice(&[0u8; 1024]);
    t
}

/// An OCI image that runtimes can unpack: one gzip layer holding one file.
pub fn runnable_image(seed: u64) -> Image {
    use std::collections::HashMap;
    let tar = tar_with("hello.txt", format!("hello from image {seed}\n").as_bytes());
    let gz = gzip_stored(&tar);
    let layer = Descriptor::of(OCI_LAYER_GZIP, &gz);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&tar)]},
    }))
    .unwrap();
    let config_d = Descriptor::of(OCI_CONFIG, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_d.json(),
        "layers": [layer.json()],
    }))
    .unwrap();
    let mut blobs = HashMap::new();
    blobs.insert(layer.digest.clone(), bytes::Bytes::from(gz));
    blobs.insert(config_d.digest.clone(), bytes::Bytes::from(config));
    Image {
        name: String::new(),
        tag: String::new(),
        media_type: OCI_MANIFEST.into(),
        digest: sha256_digest(&manifest),
        manifest,
        config: config_d,
        layers: vec![layer],
        blobs,
    }
}

/// containerd started by the test with its own root, state and socket.
pub struct Containerd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Containerd {
    pub fn start(dir: &Path) -> Containerd {
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        fs::write(
            &config,
            format!(
                "version = 2\n\
                 root = \"{root}\"\n\
                 state = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n\
                 [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = socket.display(),
                opt = dir.join("opt").display(),
            ),
        )
        .unwrap();
        let log = dir.join("containerd.log");
        let logf = fs::File::create(&log).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn containerd");
        let c = Containerd { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new("ctr")
                .arg("--address")
                .arg(&c.socket)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                fs::read_to_string(&c.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.socket).args(args);
        c
    }

    /// `ctr images pull` of `name` (unpacked with the native snapshotter), its registries
    /// configured by the `hosts.toml` files under `hosts_dir` (see [`mirror_hosts_toml`]).
    pub fn pull(&self, hosts_dir: &Path, name: &str) -> Command {
        self.ctr(&[
            "images",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
            hosts_dir.to_str().unwrap(),
            name,
        ])
    }

    /// Check that containerd lists `name` with the manifest digest `digest`; the whole list.
    pub fn assert_listed(&self, name: &str, digest: &str) -> String {
        let list = run(&mut self.ctr(&["images", "ls"]));
        let line = list
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not in:\n{list}"));
        assert!(line.contains(digest), "{line}");
        list
    }
}

/// containerd's `hosts.toml` recipe for `registry` (its `host:port`) under `hosts_dir`: pulls go
/// to the mirror at `mirror` (its URL, with the API path and `override_path`), the registry's
/// own server a closed port so that only the mirror can answer. `extra` is added under the
/// mirror's host table (a `header` table, say).
pub fn mirror_hosts_toml(hosts_dir: &Path, registry: &str, mirror: &str, extra: &str) {
    write_hosts(
        hosts_dir,
        registry,
        &format!("{}{extra}", host_table(mirror, true)),
    );
}

/// The hosts.toml recipe for `registry` under `hosts_dir`: its own `server` a closed port,
/// `host` (a `[host."…"]` table, see [`host_table`]) the mirror.
pub fn write_hosts(hosts_dir: &Path, registry: &str, host: &str) {
    let d = hosts_dir.join(registry);
    fs::create_dir_all(&d).unwrap();
    fs::write(
        d.join("hosts.toml"),
        format!("server = \"{}\"\n\n{host}", closed_url()),
    )
    .unwrap();
}

/// A `[host."<url>"]` table for pulls, the API path in the URL (`override_path`) or not.
pub fn host_table(url: &str, override_path: bool) -> String {
    if override_path {
        format!(
            "[host.\"{url}/v2\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n"
        )
    } else {
        format!("[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
