//! The deployment files: the Dockerfile, `deploy/compose`, `deploy/kubernetes` and the Helm chart
//! `deploy/helm/ocimirror`. No container engine or cluster runs here, so they are checked as
//! files, offline:
//!
//! - every YAML file under `deploy/` passes yamllint (`deploy/.yamllint`);
//! - every Kubernetes object, hand-written or rendered from the chart (Helm's Go SDK through
//!   helm-python-sdk), validates strictly against the Kubernetes schemas (kubernetes-validate,
//!   which ships them) of the oldest and newest versions in [`KUBE_VERSIONS`]; those schemas do
//!   not know the Prometheus operator's kinds, which are checked by hand instead
//!   ([`check_service_monitor`], [`check_prometheus_rule`]);
//! - the objects agree with each other and with ocimirror: selectors, ports, probe paths and
//!   schemes, the routed paths, the Ingress's timeouts against the mirror's own waits, the user
//!   the image runs as, the metrics alerts use; and the config each pod or compose service would
//!   read, with the files it would have mounted, is accepted by `ocimirror config check`;
//! - the chart renders identically twice, refuses the combinations that cannot work, and its
//!   README lists every value of its schema;
//! - the compose file matches the Compose specification (compose-spec);
//! - the Dockerfile builds the binary in one stage and runs it unprivileged in another, from
//!   bases pinned by digest, with `ocimirror healthcheck` as its HEALTHCHECK (run here against a
//!   real mirror).
//!
//! The Python tools are installed by `scripts/test.sh`; without one, the tests that need it skip
//! with a message, or fail when `OCIMIRROR_REQUIRE_ALL` is set.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::tool_or_skip;
use serde_json::{Value, json};
use tempfile::TempDir;

/// Kubernetes versions whose schemas every object must pass.
const KUBE_VERSIONS: [&str; 2] = ["1.29", "1.37"];
/// Kinds outside the Kubernetes schemas: checked by [`check_service_monitor`] and
/// [`check_prometheus_rule`].
const CRD_KINDS: [&str; 2] = ["ServiceMonitor", "PrometheusRule"];
const CHART: &str = "deploy/helm/ocimirror";
/// Values files the chart is rendered with: each file of its `ci/` directory.
const CHART_VALUES: [&str; 3] = [
    "deploy/helm/ocimirror/ci/default-values.yaml",
    "deploy/helm/ocimirror/ci/fleet-values.yaml",
    "deploy/helm/ocimirror/ci/persistence-values.yaml",
];
const DEFAULT_VALUES: &str = CHART_VALUES[0];
const FLEET_VALUES: &str = CHART_VALUES[1];
const PERSISTENCE_VALUES: &str = CHART_VALUES[2];
/// Where the chart and the plain manifests mount every secret file.
const SECRET_DIR: &str = "/run/secrets/ocimirror";
/// What the tests write into a Secret the deployment expects its operator to create.
const OPERATOR_PROVIDED: &str = "operator-provided";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

/// The directory pip installs commands into; `scripts/test.sh` puts it on PATH, and so does
/// this file for the commands it runs, in case a version manager's shims hide it.
fn python_scripts_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn command(program: &str) -> Command {
    let mut c = Command::new(program);
    if let Some(dir) = python_scripts_dir() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![dir];
        dirs.extend(std::env::split_paths(&path));
        c.env("PATH", std::env::join_paths(dirs).unwrap());
    }
    c
}

fn runs(program: &str, args: &[&str]) -> bool {
    command(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn have_yamllint() -> bool {
    tool_or_skip(
        runs("yamllint", &["--version"]),
        "yamllint",
        "pip install yamllint",
    )
}

fn have_kubernetes_validate() -> bool {
    tool_or_skip(
        runs("kubernetes-validate", &["--version"]),
        "kubernetes-validate",
        "pip install kubernetes-validate",
    )
}

fn have_python_module(module: &str, package: &str) -> bool {
    tool_or_skip(
        runs("python3", &["-c", &format!("import {module}")]),
        &format!("the Python module {module}"),
        &format!("pip install {package}"),
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `tests/deploy/tools.py` with these arguments.
fn tools_py(args: &[&str]) -> Output {
    run(command("python3").arg("tests/deploy/tools.py").args(args))
}

/// The chart rendered as `helm template -f …` would, with the values files `values` in order
/// (paths relative to the repository, or absolute); Helm's message when it refuses them.
fn try_render_chart(values: &[&str]) -> Result<String, String> {
    let mut args = vec!["helm-render", CHART];
    args.extend(values);
    let out = tools_py(&args);
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(text(&out))
    }
}

fn render_chart(values: &[&str]) -> String {
    try_render_chart(values)
        .unwrap_or_else(|e| panic!("rendering {CHART} with {values:?} failed:\n{e}"))
}

/// `helm lint --strict` with the values files `values` (none: the chart's own defaults).
fn lint_chart(values: &[&str]) -> Result<(), String> {
    let mut args = vec!["helm-lint", CHART];
    args.extend(values);
    let out = tools_py(&args);
    if out.status.success() {
        Ok(())
    } else {
        Err(text(&out))
    }
}

/// A values file holding `yaml`, in `dir`.
fn values_file(dir: &TempDir, name: &str, yaml: &str) -> String {
    let p = dir.path().join(name);
    fs::write(&p, yaml).unwrap();
    p.display().to_string()
}

/// The chart rendered with its CI defaults and then `yaml`.
fn render_text_with(yaml: &str) -> String {
    let dir = TempDir::new().unwrap();
    let extra = values_file(&dir, "extra.yaml", yaml);
    render_chart(&[DEFAULT_VALUES, &extra])
}

fn render_with(yaml: &str) -> Vec<Value> {
    parse_yaml_docs(&render_text_with(yaml))
}

/// yamllint, strict (warnings fail), with `deploy/.yamllint`, on `paths`.
fn yamllint(paths: &[&Path]) -> Result<(), String> {
    let out = run(command("yamllint")
        .args(["-s", "-f", "parsable", "-c", "deploy/.yamllint"])
        .args(paths));
    if out.status.success() {
        Ok(())
    } else {
        Err(text(&out))
    }
}

/// Validate the objects in `files` against the Kubernetes schemas of every [`KUBE_VERSIONS`],
/// strictly (unknown fields fail). Every object must pass, apart from the [`CRD_KINDS`].
fn kubernetes_validate(files: &[PathBuf]) -> Result<(), String> {
    let known = files
        .iter()
        .flat_map(|f| parse_yaml_docs(&fs::read_to_string(f).unwrap()))
        .filter(|d| !CRD_KINDS.contains(&kind(d)))
        .count();
    for version in KUBE_VERSIONS {
        let out = run(command("kubernetes-validate")
            .args(["--strict", "-k", version])
            .args(files));
        let log = text(&out);
        if !out.status.success() {
            return Err(log);
        }
        let passed = log.lines().filter(|l| l.contains(" passed for ")).count();
        let unknown: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("Couldn't find schema"))
            .filter(|l| !CRD_KINDS.iter().any(|k| l.contains(&format!("kind {k} "))))
            .collect();
        if passed != known || !unknown.is_empty() {
            return Err(format!(
                "{passed} of {known} objects validated against {version}:\n{log}"
            ));
        }
    }
    Ok(())
}

fn have_helm() -> bool {
    have_python_module("helm_python", "helm-python-sdk")
}

// ---------------------------------------------------------------------------------------------
// YAML
// ---------------------------------------------------------------------------------------------

/// Every non-empty document of a (multi-document) YAML text.
fn parse_yaml_docs(text: &str) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("invalid YAML: {e}\n{text}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn parse_yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("invalid YAML: {e}\n{text}"))
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("")
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {v}"))
}

fn the<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| kind(d) == k).collect();
    assert_eq!(found.len(), 1, "expected one {k}, found {}", found.len());
    found[0]
}

fn named<'a>(docs: &'a [Value], k: &str, n: &str) -> Option<&'a Value> {
    docs.iter().find(|d| kind(d) == k && name(d) == n)
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// `over` merged into `base` as Helm coalesces values: mappings key by key, `null` removes the
/// key, anything else replaces.
fn helm_merge(base: &Value, over: &Value) -> Value {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            let mut out = b.clone();
            for (k, v) in o {
                if v.is_null() {
                    out.remove(k);
                } else {
                    let merged = match out.get(k) {
                        Some(old) => helm_merge(old, v),
                        None => v.clone(),
                    };
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        _ => over.clone(),
    }
}

/// The chart's values with the files `files` merged in, in order.
fn chart_values(files: &[&str]) -> Value {
    let mut v = parse_yaml(&read(&format!("{CHART}/values.yaml")));
    for f in files {
        let path = root().join(f);
        v = helm_merge(&v, &parse_yaml(&fs::read_to_string(&path).unwrap()));
    }
    v
}

/// A Kubernetes quantity (`10Gi`, `500M`, `1024`) in bytes.
fn quantity_bytes(q: &str) -> u64 {
    let units: [(&str, u64); 10] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap_or_else(|e| panic!("{q:?}: {e}")) * factor;
        }
    }
    q.parse().unwrap_or_else(|e| panic!("{q:?}: {e}"))
}

/// Compose-style interpolation with every variable unset: `${VAR:-default}` and `${VAR-default}`
/// give the default, `${VAR}` nothing, `$$` a dollar.
fn interpolate(s: &str) -> String {
    let re = regex::Regex::new(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?]([^}]*))?\}").unwrap();
    re.replace_all(s, |c: &regex::Captures| {
        c.get(2).map_or(String::new(), |m| m.as_str().to_owned())
    })
    .replace("$$", "$")
}

/// The listen port of an ocimirror config (`listen`, default `0.0.0.0:5000`).
fn listen_port(config: &Value) -> u16 {
    let listen = config["listen"].as_str().unwrap_or("0.0.0.0:5000");
    listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("listen {listen:?} has no port"))
}

fn duration_secs(s: &str) -> u64 {
    humantime::parse_duration(s)
        .unwrap_or_else(|e| panic!("{s:?}: {e}"))
        .as_secs()
}

/// `http` or `https`: what the mirror with this config serves.
fn config_scheme(config: &Value) -> &'static str {
    if config.get("tls").is_some_and(|t| !t.is_null()) {
        "https"
    } else {
        "http"
    }
}

// ---------------------------------------------------------------------------------------------
// ocimirror config check, in the file system a pod or container would see
// ---------------------------------------------------------------------------------------------

/// What one container would see: files and directories at their absolute paths inside it, its
/// environment, and its arguments. [`ContainerView::config_check`] lays them out under a
/// temporary directory and runs `ocimirror config check` on the config its `--config` names.
#[derive(Default, Debug)]
struct ContainerView {
    /// Mount points, each a file or directory inside the container.
    mounts: Vec<String>,
    files: BTreeMap<String, Vec<u8>>,
    dirs: Vec<String>,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl ContainerView {
    fn config_path(&self) -> &str {
        let i = self
            .args
            .iter()
            .position(|a| a == "--config")
            .unwrap_or_else(|| panic!("no --config in {:?}", self.args));
        &self.args[i + 1]
    }

    fn config(&self) -> Value {
        let path = self.config_path();
        let text = self
            .files
            .get(path)
            .unwrap_or_else(|| panic!("the config {path} is not in any mounted volume"));
        parse_yaml(std::str::from_utf8(text).unwrap())
    }

    /// `ocimirror keygen` writes `key` and `cert` (paths inside the container) as the deployment
    /// says its operator or init step does.
    fn keygen(&mut self, key: &str, cert: &str) {
        let dir = TempDir::new().unwrap();
        let (k, c) = (dir.path().join("k.pem"), dir.path().join("c.pem"));
        let out = run(Command::new(common::ocimirror_bin())
            .args(["keygen", "--key"])
            .arg(&k)
            .arg("--certificate")
            .arg(&c));
        assert!(out.status.success(), "keygen: {}", text(&out));
        self.files.insert(key.to_owned(), fs::read(k).unwrap());
        self.files.insert(cert.to_owned(), fs::read(c).unwrap());
    }

    /// Rewrite absolute paths under a mount point to the same path under `base`.
    fn relocate(&self, s: &str, base: &Path) -> String {
        if self.mounts.is_empty() {
            return s.to_owned();
        }
        let mut mounts: Vec<&String> = self.mounts.iter().collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        let alternatives: Vec<String> = mounts.iter().map(|m| regex::escape(m)).collect();
        let re = regex::Regex::new(&format!(
            r#"(?m)(^|[\s"'=:\[,])({})\b"#,
            alternatives.join("|")
        ))
        .unwrap();
        re.replace_all(s, |c: &regex::Captures| {
            format!("{}{}{}", &c[1], base.display(), &c[2])
        })
        .into_owned()
    }

    /// `ocimirror config check` on the laid-out container: success, and what it printed.
    fn run_config_check(&self, what: &str) -> (bool, String) {
        let base = TempDir::new().unwrap();
        let place = |p: &str| base.path().join(p.trim_start_matches('/'));
        for d in &self.dirs {
            fs::create_dir_all(place(d)).unwrap();
        }
        let config_path = self.config_path();
        for (p, data) in &self.files {
            let at = place(p);
            fs::create_dir_all(at.parent().unwrap()).unwrap();
            let data = if p == config_path {
                self.relocate(std::str::from_utf8(data).unwrap(), base.path())
                    .into_bytes()
            } else {
                data.clone()
            };
            fs::write(at, data).unwrap();
        }
        let config = place(config_path);
        assert!(
            config.is_file(),
            "{what}: the config {config_path} is not in any mounted volume"
        );
        let mut cmd = Command::new(common::ocimirror_bin());
        cmd.args(["config", "check"]).arg(&config).env_clear();
        for (k, v) in &self.env {
            cmd.env(k, self.relocate(v, base.path()));
        }
        let out = run(&mut cmd);
        let ok = out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok";
        (ok, text(&out))
    }

    fn config_check(&self, what: &str) {
        let (ok, log) = self.run_config_check(what);
        assert!(
            ok,
            "{what}: ocimirror config check refuses its config:\n{log}\n--- config ---\n{}",
            String::from_utf8_lossy(&self.files[self.config_path()])
        );
    }
}

/// The data of a ConfigMap or Secret (Secret data base64-decoded, stringData as is).
fn object_data(obj: &Value) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    if let Some(d) = obj["data"].as_object() {
        for (k, v) in d {
            let v = str_of(v, k);
            let bytes = if kind(obj) == "Secret" {
                data_encoding::BASE64
                    .decode(v.as_bytes())
                    .unwrap_or_else(|e| panic!("Secret {}: {k} is not base64: {e}", name(obj)))
            } else {
                v.as_bytes().to_vec()
            };
            out.insert(k.clone(), bytes);
        }
    }
    if let Some(d) = obj["stringData"].as_object() {
        for (k, v) in d {
            out.insert(k.clone(), str_of(v, k).as_bytes().to_vec());
        }
    }
    out
}

/// One ConfigMap or Secret a volume takes files from: its kind, name and `items` (key, path).
struct VolumeSource<'a> {
    kind: &'static str,
    name: &'a str,
    items: Option<Vec<(String, String)>>,
    optional: bool,
}

/// The sources of a volume (a configMap, a secret, or a projected volume's), or None for a
/// volume that holds no objects' files (emptyDir, a claim).
fn volume_source<'a>(kind: &'static str, src: &'a Value, name_key: &str) -> VolumeSource<'a> {
    VolumeSource {
        kind,
        name: str_of(&src[name_key], name_key),
        items: src["items"].as_array().map(|items| {
            items
                .iter()
                .map(|i| {
                    (
                        str_of(&i["key"], "items.key").to_owned(),
                        str_of(&i["path"], "items.path").to_owned(),
                    )
                })
                .collect()
        }),
        optional: src["optional"] == true,
    }
}

fn volume_sources(vol: &Value) -> Option<Vec<VolumeSource<'_>>> {
    let source = volume_source;
    if let Some(c) = vol.get("configMap") {
        Some(vec![source("ConfigMap", c, "name")])
    } else if let Some(s) = vol.get("secret") {
        Some(vec![source("Secret", s, "secretName")])
    } else if let Some(p) = vol.get("projected") {
        Some(
            p["sources"]
                .as_array()
                .expect("projected.sources")
                .iter()
                .map(|s| match (s.get("secret"), s.get("configMap")) {
                    (Some(sec), None) => source("Secret", sec, "name"),
                    (None, Some(cm)) => source("ConfigMap", cm, "name"),
                    _ => panic!("a projected source this test does not lay out: {s}"),
                })
                .collect(),
        )
    } else {
        assert!(
            vol.get("emptyDir").is_some() || vol.get("persistentVolumeClaim").is_some(),
            "volume {}: a kind this test does not lay out: {vol}",
            vol["name"]
        );
        None
    }
}

/// The key pairs `ocimirror keygen` writes, as a Secret names them.
const KEY_PAIRS: [(&str, &str); 2] = [("token.key", "token.crt"), ("tls.key", "tls.crt")];

/// The ocimirror container of `deployment`, as it would see its volumes and environment.
///
/// A Secret the deployment names but does not contain is one its operator creates (the README
/// says how): a key pair in it is what `ocimirror keygen` writes, any other key it names holds
/// a placeholder, and a Secret mounted whole (no `items`) provides the files the config names
/// in its directory.
fn pod_view(docs: &[Value], deployment: &Value) -> ContainerView {
    let spec = &deployment["spec"]["template"]["spec"];
    let container = ocimirror_container(deployment);
    let mut view = ContainerView {
        args: container["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| str_of(a, "args").to_owned())
            .collect(),
        ..Default::default()
    };
    let volumes = spec["volumes"].as_array().expect("volumes");
    let mut keygen: Vec<(String, String)> = Vec::new();
    let mut whole_secret_dirs: Vec<String> = Vec::new();
    for m in container["volumeMounts"].as_array().expect("volumeMounts") {
        let mount = str_of(&m["mountPath"], "mountPath").trim_end_matches('/');
        let vname = str_of(&m["name"], "volumeMounts.name");
        let vol = volumes
            .iter()
            .find(|v| v["name"] == vname)
            .unwrap_or_else(|| panic!("volumeMount {vname} has no volume"));
        view.mounts.push(mount.to_owned());
        view.dirs.push(mount.to_owned());
        for src in volume_sources(vol).into_iter().flatten() {
            let Some(obj) = named(docs, src.kind, src.name) else {
                assert_eq!(
                    src.kind, "Secret",
                    "volume {vname}: ConfigMap {} is not in the manifests",
                    src.name
                );
                let Some(items) = src.items else {
                    whole_secret_dirs.push(mount.to_owned());
                    continue;
                };
                for (key, path) in &items {
                    let at = format!("{mount}/{path}");
                    if let Some((k, c)) = KEY_PAIRS.iter().find(|(k, c)| key == k || key == c) {
                        let path_of = |want: &str| {
                            items
                                .iter()
                                .find(|(key, _)| key == want)
                                .map(|(_, p)| format!("{mount}/{p}"))
                                .unwrap_or_else(|| {
                                    panic!("Secret {}: {key} without {k}/{c}", src.name)
                                })
                        };
                        let pair = (path_of(k), path_of(c));
                        if !keygen.contains(&pair) {
                            keygen.push(pair);
                        }
                    } else {
                        view.files.insert(at, OPERATOR_PROVIDED.as_bytes().to_vec());
                    }
                }
                continue;
            };
            let data = object_data(obj);
            let items: Vec<(String, String)> = src
                .items
                .unwrap_or_else(|| data.keys().map(|k| (k.clone(), k.clone())).collect());
            for (key, path) in items {
                match data.get(&key) {
                    Some(bytes) => {
                        view.files.insert(format!("{mount}/{path}"), bytes.clone());
                    }
                    None => assert!(
                        src.optional,
                        "volume {vname}: {} {} has no key {key}",
                        src.kind, src.name
                    ),
                }
            }
        }
    }
    for (key, cert) in keygen {
        view.keygen(&key, &cert);
    }
    // The files the config names in a directory that a whole operator-made Secret fills.
    let config_text = String::from_utf8_lossy(&view.files[view.config_path()]).into_owned();
    for dir in whole_secret_dirs {
        let re = regex::Regex::new(&format!(r"{}/[A-Za-z0-9._-]+", regex::escape(&dir))).unwrap();
        for m in re.find_iter(&config_text) {
            view.files
                .entry(m.as_str().to_owned())
                .or_insert_with(|| OPERATOR_PROVIDED.as_bytes().to_vec());
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let n = str_of(&e["name"], "env.name").to_owned();
        if let Some(v) = e["value"].as_str() {
            // $(VAR) names a variable defined before, as the kubelet expands it.
            let mut v = v.to_owned();
            for (k, val) in &view.env {
                v = v.replace(&format!("$({k})"), val);
            }
            view.env.push((n, v));
        } else if let Some(f) = e["valueFrom"].get("fieldRef") {
            let field = str_of(&f["fieldPath"], "fieldRef.fieldPath");
            assert_eq!(
                field, "status.podIP",
                "env {n}: a field this test does not know"
            );
            view.env.push((n, POD_IP.to_owned()));
        } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
            let secret = str_of(&r["name"], "secretKeyRef.name");
            let key = str_of(&r["key"], "secretKeyRef.key");
            match named(docs, "Secret", secret) {
                None => view.env.push((n, OPERATOR_PROVIDED.to_owned())),
                Some(s) => match object_data(s).remove(key) {
                    Some(v) => view.env.push((n, String::from_utf8(v).unwrap())),
                    None => assert!(
                        r["optional"] == true,
                        "env {n}: Secret {secret} has no key {key} and the reference is not optional"
                    ),
                },
            }
        } else {
            panic!("env {n}: a source this test does not know: {e}");
        }
    }
    view
}

fn ocimirror_container(deployment: &Value) -> &Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    containers
        .iter()
        .find(|c| c["name"] == "ocimirror")
        .expect("a container named ocimirror")
}

/// The config file an ocimirror Deployment reads, parsed.
fn pod_config(docs: &[Value], deployment: &Value) -> Value {
    pod_view(docs, deployment).config()
}

/// The Secrets `deployment` names (volumes and environment) that `docs` do not contain: those
/// its operator creates.
fn operator_secrets(docs: &[Value], deployment: &Value) -> BTreeSet<String> {
    let spec = &deployment["spec"]["template"]["spec"];
    let mut out = BTreeSet::new();
    for vol in spec["volumes"].as_array().into_iter().flatten() {
        for src in volume_sources(vol).into_iter().flatten() {
            if src.kind == "Secret" && named(docs, "Secret", src.name).is_none() {
                out.insert(src.name.to_owned());
            }
        }
    }
    for e in ocimirror_container(deployment)["env"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(n) = e["valueFrom"]["secretKeyRef"]["name"].as_str()
            && named(docs, "Secret", n).is_none()
        {
            out.insert(n.to_owned());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Kubernetes objects agree with each other and with ocimirror
// ---------------------------------------------------------------------------------------------

/// The longest the mirror waits before a response's first byte: another replica's fill of the
/// same blob (`MAX_REMOTE_WAIT` in src/registry/lease.rs), then its own fetch from the upstream,
/// up to three round trips (the challenge, a token, the retry) each bounded by the upstream's
/// `first_byte_timeout`.
fn longest_wait_before_first_byte(config: &Value) -> u64 {
    let src = read("src/registry/lease.rs");
    let re = regex::Regex::new(r"const MAX_REMOTE_WAIT: Duration = Duration::from_secs\((\d+)\);")
        .unwrap();
    let remote: u64 = re
        .captures(&src)
        .expect("MAX_REMOTE_WAIT in src/registry/lease.rs")[1]
        .parse()
        .unwrap();
    let first_byte = std::iter::once(&config["upstream"])
        .chain(config["upstreams"].as_array().into_iter().flatten())
        .map(|u| duration_secs(u["first_byte_timeout"].as_str().unwrap_or("30s")))
        .max()
        .unwrap();
    remote + 3 * first_byte
}

/// The checks a set of Kubernetes objects for ocimirror must pass, whoever wrote them; the
/// config check included.
fn check_kubernetes_objects(what: &str, docs: &[Value]) {
    check_objects(what, docs, true);
}

fn check_objects(what: &str, docs: &[Value], config_check: bool) {
    let deployment = the(docs, "Deployment");
    let service = the(docs, "Service");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(
        labels_match(&deployment["spec"]["selector"]["matchLabels"], pod_labels),
        "{what}: the Deployment's selector does not select its pods"
    );
    assert!(
        labels_match(&service["spec"]["selector"], pod_labels),
        "{what}: the Service does not select the Deployment's pods"
    );
    // Nothing else (the `helm test` pod) carries the pods' selector labels.
    for d in docs.iter().filter(|d| kind(d) == "Pod") {
        assert!(
            !labels_match(&service["spec"]["selector"], &d["metadata"]["labels"]),
            "{what}: Pod {} would be taken for a replica by the Service",
            name(d)
        );
    }

    let config = pod_config(docs, deployment);
    let scheme = config_scheme(&config);
    let container = ocimirror_container(deployment);
    let ports = container["ports"].as_array().expect("ports");
    let http = ports
        .iter()
        .find(|p| p["name"] == "http")
        .unwrap_or_else(|| panic!("{what}: no container port named http"));
    assert_eq!(
        http["containerPort"].as_u64(),
        Some(listen_port(&config).into()),
        "{what}: the container port is not the config's listen port"
    );
    for (probe, path, required) in [
        ("startupProbe", "/healthz", false),
        ("livenessProbe", "/healthz", true),
        ("readinessProbe", "/readyz", true),
    ] {
        let p = &container[probe];
        if p.is_null() && !required {
            continue;
        }
        let get = &p["httpGet"];
        assert_eq!(get["path"], path, "{what}: {probe} path");
        assert_eq!(get["port"], "http", "{what}: {probe} port");
        assert_eq!(
            get["scheme"]
                .as_str()
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some(scheme),
            "{what}: {probe} must name the scheme the config serves ({scheme})"
        );
        // One slow answer (a busy node, a GC pause) must not restart or unroute a pod.
        assert!(
            p["timeoutSeconds"].as_u64().unwrap_or(1) >= 2,
            "{what}: {probe} timeoutSeconds below 2 s"
        );
        if probe != "startupProbe" {
            assert!(
                p["failureThreshold"].as_u64().unwrap_or(3) >= 2,
                "{what}: {probe} acts on a single failure"
            );
        }
    }
    let service_ports = service["spec"]["ports"].as_array().expect("Service ports");
    assert!(
        service_ports
            .iter()
            .any(|p| p["name"] == "http" && p["targetPort"] == "http"),
        "{what}: the Service has no port http targeting the container's http port"
    );

    // The image's user (Dockerfile USER), checked by the kubelet.
    let pod_spec = &deployment["spec"]["template"]["spec"];
    let pod_security = &pod_spec["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"], true, "{what}: runAsNonRoot");
    assert_eq!(
        pod_security["runAsUser"].as_u64(),
        Some(dockerfile_uid()),
        "{what}: runAsUser is not the image's USER"
    );
    assert_eq!(
        pod_spec["automountServiceAccountToken"], false,
        "{what}: ocimirror needs no Kubernetes API token"
    );
    // SIGTERM drains for server.shutdown_timeout; the kubelet must not kill it sooner.
    let grace = pod_spec["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    let drain = duration_secs(
        config["server"]["shutdown_timeout"]
            .as_str()
            .unwrap_or("30s"),
    );
    assert!(
        grace > drain,
        "{what}: terminationGracePeriodSeconds {grace} does not cover shutdown_timeout {drain}s"
    );
    // Several replicas share nothing unless storage and cache are shared.
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
    let hpa = docs.iter().find(|d| kind(d) == "HorizontalPodAutoscaler");
    if replicas > 1 || hpa.is_some() {
        assert_eq!(
            config["storage"]["backend"], "s3",
            "{what}: replicas need S3"
        );
        assert_eq!(
            config["cache"]["backend"], "redis",
            "{what}: replicas need Redis"
        );
    }
    let min_replicas = hpa.map_or(replicas, |h| h["spec"]["minReplicas"].as_u64().unwrap_or(1));

    if let Some(ingress) = docs.iter().find(|d| kind(d) == "Ingress") {
        let auth_path = config["auth"]["path"].as_str().unwrap_or("/auth");
        let mut routed = BTreeSet::new();
        for rule in ingress["spec"]["rules"].as_array().expect("rules") {
            for p in rule["http"]["paths"].as_array().expect("paths") {
                let backend = &p["backend"]["service"];
                assert_eq!(
                    backend["name"], service["metadata"]["name"],
                    "{what}: backend"
                );
                let port = &backend["port"];
                assert!(
                    service_ports
                        .iter()
                        .any(|sp| sp["name"] == port["name"] || sp["port"] == port["number"]),
                    "{what}: the Ingress names a port the Service lacks: {port}"
                );
                routed.insert(str_of(&p["path"], "path").to_owned());
            }
        }
        assert!(
            routed.contains("/v2"),
            "{what}: the Ingress does not route /v2"
        );
        if config.get("auth").is_some() {
            assert!(
                routed.contains(auth_path),
                "{what}: the Ingress does not route the token endpoint {auth_path}"
            );
        }
        // ingress-nginx cuts a response after proxy-read-timeout seconds without a byte: it
        // must outlast every wait of the mirror, or a client gets 504 just as the mirror would
        // answer.
        let annotations = &ingress["metadata"]["annotations"];
        if annotations.as_object().is_some_and(|a| {
            a.keys()
                .any(|k| k.starts_with("nginx.ingress.kubernetes.io/"))
        }) {
            let longest = longest_wait_before_first_byte(&config);
            for a in ["proxy-read-timeout", "proxy-send-timeout"] {
                let secs: u64 = annotations[format!("nginx.ingress.kubernetes.io/{a}")]
                    .as_str()
                    .unwrap_or_else(|| panic!("{what}: no {a} (nginx's default is 60 s)"))
                    .parse()
                    .unwrap_or_else(|e| panic!("{what}: {a}: {e}"));
                assert!(
                    secs > longest,
                    "{what}: {a} {secs} s does not outlast the mirror's longest wait, {longest} s"
                );
            }
            let backend_https =
                annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS";
            assert_eq!(
                backend_https,
                scheme == "https",
                "{what}: the Ingress's backend protocol is not the pods' scheme"
            );
        }
    }
    if let Some(pdb) = docs.iter().find(|d| kind(d) == "PodDisruptionBudget") {
        assert!(
            labels_match(&pdb["spec"]["selector"]["matchLabels"], pod_labels),
            "{what}: the PodDisruptionBudget does not select the pods"
        );
        // A budget that never allows an eviction blocks every node drain.
        if let Some(min) = pdb["spec"]["minAvailable"].as_u64() {
            assert!(
                min < min_replicas,
                "{what}: minAvailable {min} with {min_replicas} replica(s) blocks node drains"
            );
        }
        if let Some(max) = pdb["spec"]["maxUnavailable"].as_u64() {
            assert!(max > 0, "{what}: maxUnavailable 0 blocks node drains");
        }
    }
    if let Some(hpa) = hpa {
        let target = &hpa["spec"]["scaleTargetRef"];
        assert_eq!(target["kind"], "Deployment", "{what}: HPA target");
        assert_eq!(
            target["name"], deployment["metadata"]["name"],
            "{what}: HPA target"
        );
        assert!(
            hpa["spec"]["minReplicas"].as_u64() <= hpa["spec"]["maxReplicas"].as_u64(),
            "{what}: HPA minReplicas > maxReplicas"
        );
        assert!(
            container["resources"]["requests"]["cpu"].is_string(),
            "{what}: a CPU-utilisation HPA needs a CPU request"
        );
        // Scale-down removes pods with pulls in flight: one at a time, after a quiet spell.
        let down = &hpa["spec"]["behavior"]["scaleDown"];
        assert!(
            down["stabilizationWindowSeconds"].as_u64().unwrap_or(0) >= 300,
            "{what}: HPA scales down after less than 5 minutes of low load"
        );
        assert!(
            down["policies"].as_array().is_some_and(
                |p| !p.is_empty() && p.iter().all(|p| p["type"] == "Pods" && p["value"] == 1)
            ),
            "{what}: HPA scale-down is not one pod at a time"
        );
    }
    if let Some(np) = docs.iter().find(|d| kind(d) == "NetworkPolicy") {
        check_network_policy(what, np, pod_labels, container);
        // The `helm test` pod gets through too.
        for pod in docs.iter().filter(|d| kind(d) == "Pod") {
            assert!(
                np["spec"]["ingress"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["from"].as_array().unwrap().iter().any(|f| f
                        .get("namespaceSelector")
                        .is_none()
                        && labels_match(
                            &f["podSelector"]["matchLabels"],
                            &pod["metadata"]["labels"]
                        ))),
                "{what}: the NetworkPolicy keeps the test pod {} out",
                name(pod)
            );
        }
    }
    for sm in docs.iter().filter(|d| kind(d) == "ServiceMonitor") {
        check_service_monitor(what, sm, service, scheme);
    }
    for rule in docs.iter().filter(|d| kind(d) == "PrometheusRule") {
        check_prometheus_rule(what, rule);
    }
    for pod in docs.iter().filter(|d| kind(d) == "Pod") {
        check_test_pod(what, pod, service, container, scheme);
    }

    check_cluster_wiring(what, docs, deployment);
    if config_check {
        pod_view(docs, deployment).config_check(what);
    }
}

/// The address `pod_view` gives the pod (the downward API's `status.podIP`).
const POD_IP: &str = "10.0.0.7";

/// The port of a listen address (`:5001`, `0.0.0.0:5001`).
fn port_of(listen: &str) -> u16 {
    listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{listen:?} has no port"))
}

/// With a `cluster` section, the fleet's peer wiring: the container port named `cluster` is
/// `cluster.listen`'s port, and no Service routes it (peers reach each other by pod IP);
/// `cluster.advertise` is the pod's own IP on that port (each replica its own address); the
/// shared secret is a file in a mounted volume where `cluster.secret_file` says. The
/// NetworkPolicy, when there is one, lets only the replicas reach that port
/// ([`check_network_policy`]).
fn check_cluster_wiring(what: &str, docs: &[Value], deployment: &Value) {
    let view = pod_view(docs, deployment);
    let config = view.config();
    let container = ocimirror_container(deployment);
    let peer_port = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "cluster");
    let Some(cluster) = config.get("cluster").filter(|c| !c.is_null()) else {
        assert!(
            peer_port.is_none(),
            "{what}: a container port cluster without a cluster section"
        );
        return;
    };
    let port = port_of(cluster["listen"].as_str().unwrap_or(":5001"));
    let peer_port =
        peer_port.unwrap_or_else(|| panic!("{what}: cluster.listen without a container port"));
    assert_eq!(
        peer_port["containerPort"].as_u64(),
        Some(port.into()),
        "{what}: the container port cluster is not cluster.listen's port"
    );
    for svc in docs.iter().filter(|d| kind(d) == "Service") {
        for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
            assert!(
                p["targetPort"] != "cluster" && p["targetPort"].as_u64() != Some(port.into()),
                "{what}: Service {} routes the peer port, which only the replicas may reach",
                name(svc)
            );
        }
    }
    let advertise = view
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "OCIMIRROR_CLUSTER__ADVERTISE")
        .map(|(_, v)| v.clone())
        .or_else(|| cluster["advertise"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("{what}: no cluster.advertise"));
    assert_eq!(
        advertise,
        format!("http://{POD_IP}:{port}"),
        "{what}: cluster.advertise must be the pod's own IP (the downward API) on cluster.listen's port"
    );
    let secret = str_of(&cluster["secret_file"], "cluster.secret_file");
    assert!(
        view.files.get(secret).is_some_and(|s| !s.is_empty()),
        "{what}: cluster.secret_file {secret} is not in any mounted volume"
    );
}

/// Only the listed peers reach the pods: the http port from a non-empty list, the peer port
/// (when the pods have one) from the replicas themselves.
fn check_network_policy(what: &str, np: &Value, pod_labels: &Value, container: &Value) {
    assert!(
        labels_match(&np["spec"]["podSelector"]["matchLabels"], pod_labels),
        "{what}: the NetworkPolicy does not select the pods"
    );
    let types: Vec<&str> = np["spec"]["policyTypes"]
        .as_array()
        .expect("policyTypes")
        .iter()
        .map(|t| str_of(t, "policyTypes"))
        .collect();
    assert!(
        types.contains(&"Ingress"),
        "{what}: NetworkPolicy without Ingress"
    );
    let rules = np["spec"]["ingress"].as_array().expect("ingress rules");
    let rule_for = |port: &str| {
        rules
            .iter()
            .find(|r| {
                r["ports"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["port"] == port))
            })
            .unwrap_or_else(|| panic!("{what}: no NetworkPolicy rule for port {port}"))
    };
    for r in rules {
        assert!(
            r["from"].as_array().is_some_and(|f| !f.is_empty()),
            "{what}: a NetworkPolicy rule open to every peer: {r}"
        );
    }
    rule_for("http");
    if let Some(p) = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "cluster")
    {
        let rule = rule_for(str_of(&p["name"], "port name"));
        assert!(
            rule["from"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f.get("namespaceSelector").is_none()
                    && labels_match(&f["podSelector"]["matchLabels"], pod_labels)),
            "{what}: the peer port is open to more than the replicas"
        );
    }
}

/// The `helm test` pod: ocimirror's healthcheck against the Service, in the pods' scheme, as
/// unprivileged as the pods.
fn check_test_pod(what: &str, pod: &Value, service: &Value, container: &Value, scheme: &str) {
    assert_eq!(
        pod["metadata"]["annotations"]["helm.sh/hook"],
        "test",
        "{what}: Pod {} is not a helm test",
        name(pod)
    );
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["image"], container["image"], "{what}: test pod image");
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("test pod args")
        .iter()
        .map(|a| str_of(a, "args"))
        .collect();
    assert_eq!(
        args[0], "healthcheck",
        "{what}: the test pod runs ocimirror healthcheck"
    );
    let url = args[args.iter().position(|a| *a == "--url").expect("--url") + 1];
    let port = service["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(
        url,
        format!("{scheme}://{}:{port}/healthz", name(service)),
        "{what}: the test pod checks another address"
    );
    assert_eq!(
        args.contains(&"--insecure"),
        scheme == "https",
        "{what}: --insecure goes with https (the certificate names the public host)"
    );
    assert_eq!(
        c["securityContext"], container["securityContext"],
        "{what}: the test pod runs as the pods do"
    );
    assert_eq!(pod["spec"]["restartPolicy"], "Never", "{what}: test pod");
}

/// The ServiceMonitor, which the Kubernetes schemas do not cover: the fields used are the
/// Prometheus operator's (monitoring.coreos.com/v1), and it scrapes `/metrics` through a port
/// of the ocimirror Service it selects, in the scheme the pods serve.
fn check_service_monitor(what: &str, sm: &Value, service: &Value, scheme: &str) {
    assert_eq!(
        sm["apiVersion"], "monitoring.coreos.com/v1",
        "{what}: apiVersion"
    );
    assert!(
        !name(sm).is_empty(),
        "{what}: ServiceMonitor without a name"
    );
    let allowed_top = ["apiVersion", "kind", "metadata", "spec"];
    let allowed_spec = ["selector", "endpoints", "namespaceSelector", "jobLabel"];
    let allowed_endpoint = [
        "port",
        "path",
        "interval",
        "scrapeTimeout",
        "scheme",
        "tlsConfig",
        "honorLabels",
        "relabelings",
        "metricRelabelings",
    ];
    for (keys, allowed) in [
        (sm.as_object(), &allowed_top[..]),
        (sm["spec"].as_object(), &allowed_spec[..]),
    ] {
        for k in keys.expect("a mapping").keys() {
            assert!(
                allowed.contains(&k.as_str()),
                "{what}: ServiceMonitor field {k}"
            );
        }
    }
    assert!(
        labels_match(
            &sm["spec"]["selector"]["matchLabels"],
            &service["metadata"]["labels"]
        ),
        "{what}: the ServiceMonitor does not select the ocimirror Service"
    );
    let endpoints = sm["spec"]["endpoints"].as_array().expect("endpoints");
    assert!(!endpoints.is_empty(), "{what}: no ServiceMonitor endpoints");
    let service_ports = service["spec"]["ports"].as_array().unwrap();
    for e in endpoints {
        for k in e.as_object().expect("endpoint").keys() {
            assert!(
                allowed_endpoint.contains(&k.as_str()),
                "{what}: endpoint field {k}"
            );
        }
        assert!(
            service_ports.iter().any(|p| p["name"] == e["port"]),
            "{what}: the ServiceMonitor scrapes port {} which the Service lacks",
            e["port"]
        );
        assert_eq!(e["path"], "/metrics", "{what}: metrics path");
        assert_eq!(
            e["scheme"].as_str().unwrap_or("http"),
            scheme,
            "{what}: the ServiceMonitor scrapes in another scheme than the pods serve"
        );
        if let Some(i) = e["interval"].as_str() {
            duration_secs(i);
        }
        for r in ["relabelings", "metricRelabelings"] {
            for rule in e[r].as_array().into_iter().flatten() {
                for k in rule.as_object().expect("relabeling").keys() {
                    assert!(
                        [
                            "sourceLabels",
                            "separator",
                            "targetLabel",
                            "regex",
                            "modulus",
                            "replacement",
                            "action"
                        ]
                        .contains(&k.as_str()),
                        "{what}: {r} field {k}"
                    );
                }
            }
        }
    }
}

/// The metric names ocimirror exports, each with its label names: the catalogue in
/// src/metrics.rs, where every family is declared once (`KONST = Kind "name" ["label", …]`).
fn source_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let re = regex::Regex::new(
        r#"=\s*(?:Counter|Gauge|Histogram)\s+"(ocimirror_[a-z0-9_]+)"\s*\[([^\]]*)\]"#,
    )
    .unwrap();
    let label = regex::Regex::new(r#""([a-z_]+)""#).unwrap();
    let text = read("src/metrics.rs");
    let out: BTreeMap<String, BTreeSet<String>> = re
        .captures_iter(&text)
        .map(|c| {
            let labels = label
                .captures_iter(&c[2])
                .map(|l| l[1].to_owned())
                .collect();
            (c[1].to_owned(), labels)
        })
        .collect();
    assert!(
        out.len() > 20,
        "the catalogue in src/metrics.rs was not read: {out:?}"
    );
    out
}

/// Labels every scraped series has (Prometheus's and the operator's target labels).
const TARGET_LABELS: [&str; 6] = [
    "job",
    "namespace",
    "pod",
    "instance",
    "service",
    "container",
];

/// The metric names and label names a PromQL expression uses are ones ocimirror exports: each
/// `ocimirror_*` name is registered in the source, each label matcher is one of its labels or a
/// target label, and each `by (…)` label one of the expression's metrics' labels.
fn check_promql(what: &str, expr: &str, metrics: &BTreeMap<String, BTreeSet<String>>) {
    let mut depth = Vec::new();
    for ch in expr.chars() {
        match ch {
            '(' | '{' | '[' => depth.push(ch),
            ')' | '}' | ']' => {
                let open = depth.pop();
                let want = match ch {
                    ')' => '(',
                    '}' => '{',
                    _ => '[',
                };
                assert_eq!(open, Some(want), "{what}: unbalanced {ch} in {expr}");
            }
            _ => {}
        }
    }
    assert!(depth.is_empty(), "{what}: unclosed {depth:?} in {expr}");
    let selector = regex::Regex::new(r"\b(ocimirror_[a-z0-9_]+|up)\b\s*(?:\{([^}]*)\})?").unwrap();
    let matcher = regex::Regex::new(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)").unwrap();
    let mut used_labels: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
    let mut any = false;
    for c in selector.captures_iter(expr) {
        any = true;
        let metric = &c[1];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| metric.strip_suffix(s))
            .filter(|b| metrics.contains_key(*b))
            .unwrap_or(metric);
        let labels = match base {
            "up" => BTreeSet::new(),
            _ => metrics
                .get(base)
                .unwrap_or_else(|| panic!("{what}: {metric} is not a metric ocimirror exports"))
                .clone(),
        };
        if let Some(m) = c.get(2) {
            for l in matcher.captures_iter(m.as_str()) {
                assert!(
                    labels.contains(&l[1]) || TARGET_LABELS.contains(&&l[1]),
                    "{what}: {metric} has no label {}",
                    &l[1]
                );
            }
        }
        if metric.ends_with("_bucket") {
            used_labels.insert("le".to_owned());
        }
        used_labels.extend(labels);
    }
    assert!(any, "{what}: no ocimirror metric in {expr}");
    let by = regex::Regex::new(r"\b(?:by|without)\s*\(([^)]*)\)").unwrap();
    for c in by.captures_iter(expr) {
        for l in c[1].split(',').map(str::trim).filter(|l| !l.is_empty()) {
            assert!(
                used_labels.contains(l),
                "{what}: aggregates by {l}, which none of its metrics has: {expr}"
            );
        }
    }
}

/// The PrometheusRule, outside the Kubernetes schemas: the operator's fields, and alerts for
/// what an operator must hear about, on metrics ocimirror exports.
fn check_prometheus_rule(what: &str, rule: &Value) {
    assert_eq!(
        rule["apiVersion"], "monitoring.coreos.com/v1",
        "{what}: apiVersion"
    );
    let metrics = source_metrics();
    let mut alerts = BTreeSet::new();
    for g in rule["spec"]["groups"].as_array().expect("groups") {
        for k in g.as_object().unwrap().keys() {
            assert!(
                ["name", "interval", "rules"].contains(&k.as_str()),
                "{what}: rule group field {k}"
            );
        }
        for r in g["rules"].as_array().expect("rules") {
            for k in r.as_object().unwrap().keys() {
                assert!(
                    ["alert", "record", "expr", "for", "labels", "annotations"]
                        .contains(&k.as_str()),
                    "{what}: rule field {k}"
                );
            }
            let alert = r["alert"].as_str().expect("alert name");
            if let Some(f) = r["for"].as_str() {
                duration_secs(f);
            }
            assert!(
                r["labels"]["severity"].is_string(),
                "{what}: {alert} has no severity"
            );
            for a in ["summary", "description"] {
                assert!(
                    r["annotations"][a].is_string(),
                    "{what}: {alert} has no {a}"
                );
            }
            check_promql(
                &format!("{what}: {alert}"),
                str_of(&r["expr"], "expr"),
                &metrics,
            );
            alerts.insert(alert.to_owned());
        }
    }
    for needed in [
        "OcimirrorUpstreamDown",
        "OcimirrorUpstreamRateLimitLow",
        "OcimirrorStorageErrors",
        "OcimirrorFillsFailing",
    ] {
        assert!(alerts.contains(needed), "{what}: no alert {needed}");
    }
}

/// The plain manifests under deploy/kubernetes, in kustomization order, and the Secrets its
/// generators make from files its operator writes.
fn plain_manifests() -> (Vec<PathBuf>, Vec<Value>) {
    let kustomization = parse_yaml(&read("deploy/kubernetes/kustomization.yaml"));
    let listed: Vec<PathBuf> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| {
            root()
                .join("deploy/kubernetes")
                .join(str_of(r, "resources"))
        })
        .collect();
    let mut on_disk: Vec<PathBuf> = fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    on_disk.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(
        sorted, on_disk,
        "kustomization.yaml must list every manifest under deploy/kubernetes"
    );
    let docs = listed
        .iter()
        .flat_map(|p| parse_yaml_docs(&fs::read_to_string(p).unwrap()))
        .collect();
    (listed, docs)
}
// ---------------------------------------------------------------------------------------------
// The Dockerfile
// ---------------------------------------------------------------------------------------------

struct Stage {
    from: String,
    name: Option<String>,
    /// (instruction, arguments), continuation lines joined.
    instructions: Vec<(String, String)>,
}

fn dockerfile_stages() -> Vec<Stage> {
    let text = read("Dockerfile").replace("\\\n", " ");
    let mut stages: Vec<Stage> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (inst, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let inst = inst.to_ascii_uppercase();
        let args = args.split_whitespace().collect::<Vec<_>>().join(" ");
        if inst == "FROM" {
            let parts: Vec<&str> = args.split(' ').collect();
            let name = (parts.len() == 3 && parts[1].eq_ignore_ascii_case("as"))
                .then(|| parts[2].to_owned());
            stages.push(Stage {
                from: parts[0].to_owned(),
                name,
                instructions: Vec::new(),
            });
        } else if let Some(s) = stages.last_mut() {
            s.instructions.push((inst, args));
        }
    }
    stages
}

/// The image a FROM names, without registry host, tag or digest: `rust` for
/// `docker.io/library/rust:1-bookworm@sha256:…`.
fn base_image_name(from: &str) -> &str {
    let path = from.split('@').next().unwrap();
    let path = path
        .rsplit_once(':')
        .map_or(path, |(p, tag)| if tag.contains('/') { path } else { p });
    path.rsplit('/').next().unwrap()
}

fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec (JSON) form: {args}: {e}"))
}

/// The numeric user the image runs as.
fn dockerfile_uid() -> u64 {
    let stages = dockerfile_stages();
    let user = stages
        .last()
        .unwrap()
        .instructions
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, a)| a.clone())
        .expect("the final stage sets USER");
    let uid = user.split(':').next().unwrap();
    uid.parse()
        .unwrap_or_else(|_| panic!("USER {user}: numeric, so that runAsNonRoot can check it"))
}

#[test]
fn dockerfile_builds_in_one_stage_and_runs_unprivileged_in_another() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "a multi-stage build");
    let (build, last) = (&stages[0], stages.last().unwrap());
    let build_name = build.name.as_deref().expect("the build stage is named");
    assert_eq!(
        base_image_name(&build.from),
        "rust",
        "built with a Rust image"
    );
    assert!(
        build.instructions.iter().any(|(i, a)| i == "RUN"
            && a.contains("cargo build --release --locked")
            && a.contains("--bin ocimirror")),
        "the build stage runs cargo build --release --locked --bin ocimirror"
    );
    assert_ne!(
        base_image_name(&last.from),
        "rust",
        "the final image has no toolchain"
    );
    // Bases pinned by digest (the tag kept for readers and for update bots), with the way to
    // update the pin said in the file.
    let digest = regex::Regex::new(r"^[^@\s]+:[^@\s]+@sha256:[0-9a-f]{64}$").unwrap();
    for s in &stages {
        assert!(
            digest.is_match(&s.from),
            "FROM {} is not pinned by digest (image:tag@sha256:…)",
            s.from
        );
    }
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains("imagetools inspect") && dockerfile.contains("digest"),
        "the Dockerfile says how to update its pinned digests"
    );
    // The binary is stripped.
    assert!(
        build.instructions.iter().any(|(i, a)| i == "RUN"
            && (a.contains("CARGO_PROFILE_RELEASE_STRIP=symbols") || a.contains("strip "))),
        "the build stage strips the binary"
    );
    // OCI labels on the image.
    let labels: String = last
        .instructions
        .iter()
        .filter(|(i, _)| i == "LABEL")
        .map(|(_, a)| a.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    for l in ["title", "description", "version", "revision", "source"] {
        assert!(
            labels.contains(&format!("org.opencontainers.image.{l}=")),
            "no LABEL org.opencontainers.image.{l}"
        );
    }
    let last_runs: String = last
        .instructions
        .iter()
        .filter(|(i, _)| i == "RUN")
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(
        last_runs.contains("ca-certificates"),
        "CA certificates installed"
    );

    // The binary comes from the build stage, and is what the entrypoint runs.
    let copied = last
        .instructions
        .iter()
        .find(|(i, a)| i == "COPY" && a.starts_with(&format!("--from={build_name} ")))
        .map(|(_, a)| a.split(' ').collect::<Vec<_>>())
        .expect("the final stage copies from the build stage");
    assert!(
        copied[1].ends_with("/ocimirror"),
        "copies the ocimirror binary"
    );
    let binary = copied[2];
    let entrypoint = last
        .instructions
        .iter()
        .find(|(i, _)| i == "ENTRYPOINT")
        .map(|(_, a)| exec_form(a))
        .expect("ENTRYPOINT");
    assert_eq!(entrypoint, [binary], "the entrypoint is the copied binary");

    // Unprivileged: a USER that is not root, also in numeric form (see dockerfile_uid).
    let user = last
        .instructions
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, a)| a.as_str())
        .expect("USER in the final stage");
    assert!(
        !["root", "0"].contains(&user.split(':').next().unwrap()),
        "USER {user} is root"
    );
    assert_ne!(dockerfile_uid(), 0);

    // The default command serves the config the image carries, which ocimirror accepts; the
    // exposed port and the volume are that config's.
    let cmd = last
        .instructions
        .iter()
        .find(|(i, _)| i == "CMD")
        .map(|(_, a)| exec_form(a))
        .expect("CMD");
    assert_eq!(cmd[..2], ["serve", "--config"], "CMD serves a config file");
    let config_in_image = &cmd[2];
    let source = last
        .instructions
        .iter()
        .filter(|(i, a)| i == "COPY" && !a.starts_with("--"))
        .map(|(_, a)| a.split(' ').collect::<Vec<_>>())
        .find(|parts| parts.last() == Some(&config_in_image.as_str()))
        .map(|parts| parts[0].to_owned())
        .unwrap_or_else(|| panic!("nothing copies {config_in_image} into the image"));
    let config = parse_yaml(&read(&source));
    let data_dir = str_of(&config["data_dir"], "data_dir").to_owned();
    let view = ContainerView {
        args: cmd.clone(),
        mounts: vec![config_in_image.clone(), data_dir.clone()],
        files: BTreeMap::from([(config_in_image.clone(), read(&source).into_bytes())]),
        dirs: vec![data_dir],
        ..Default::default()
    };
    view.config_check("the image's default config");
    let exposed: Vec<String> = last
        .instructions
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .map(|(_, a)| a.clone())
        .collect();
    assert_eq!(
        exposed,
        [listen_port(&config).to_string()],
        "EXPOSE the listen port"
    );
    // The image checks itself with its own binary (no curl in it), on the listen port.
    let healthcheck = last
        .instructions
        .iter()
        .find(|(i, _)| i == "HEALTHCHECK")
        .map(|(_, a)| a.clone())
        .expect("HEALTHCHECK");
    let cmd_at = healthcheck.find(" CMD ").expect("HEALTHCHECK … CMD [...]");
    let check = exec_form(&healthcheck[cmd_at + 5..]);
    assert_eq!(
        check[..2],
        [binary.to_owned(), "healthcheck".to_owned()],
        "the HEALTHCHECK runs `ocimirror healthcheck`"
    );
    let url = check
        .iter()
        .position(|a| a == "--url")
        .map(|i| check[i + 1].clone())
        .unwrap_or_else(|| "http://127.0.0.1:5000/healthz".to_owned());
    assert_eq!(
        url,
        format!("http://127.0.0.1:{}/healthz", listen_port(&config)),
        "the HEALTHCHECK asks the listen port's /healthz"
    );
    let volume = last
        .instructions
        .iter()
        .find(|(i, _)| i == "VOLUME")
        .map(|(_, a)| exec_form(a))
        .expect("VOLUME");
    assert_eq!(
        volume,
        [str_of(&config["data_dir"], "data_dir")],
        "VOLUME is data_dir"
    );

    // Everything copied from the build context is in it: .dockerignore excludes all else.
    let ignore = read(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        patterns.first(),
        Some(&"*"),
        ".dockerignore starts by excluding everything"
    );
    for stage in &stages {
        for (_, a) in stage.instructions.iter().filter(|(i, _)| i == "COPY") {
            if a.starts_with("--from") {
                continue;
            }
            let parts: Vec<&str> = a.split(' ').collect();
            for src in &parts[..parts.len() - 1] {
                let src = src.trim_start_matches("./").trim_end_matches('/');
                assert!(
                    root().join(src).exists(),
                    "COPY {src}: not in the repository"
                );
                assert!(
                    patterns.contains(&format!("!{src}").as_str()),
                    "COPY {src}: .dockerignore leaves it out of the build context"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn deploy_yaml_passes_yamllint() {
    if !have_yamllint() {
        return;
    }
    if let Err(e) = yamllint(&[Path::new("deploy")]) {
        panic!("yamllint:\n{e}");
    }
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    if !have_kubernetes_validate() {
        return;
    }
    let (files, _) = plain_manifests();
    if let Err(e) = kubernetes_validate(&files) {
        panic!("deploy/kubernetes: {e}");
    }
}

#[test]
fn kubernetes_manifests_agree_with_each_other_and_with_ocimirror() {
    let (_, docs) = plain_manifests();
    let kinds: BTreeSet<&str> = docs.iter().map(kind).collect();
    for k in [
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "Ingress",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(k), "deploy/kubernetes has no {k}");
    }
    // A fleet: the replicas stream each other's fills (check_cluster_wiring).
    let deployment = the(&docs, "Deployment");
    assert!(
        pod_config(&docs, deployment).get("cluster").is_some(),
        "deploy/kubernetes: the replicas have no cluster section"
    );
    check_kubernetes_objects("deploy/kubernetes", &docs);
}

/// The signing key is not shipped: kustomize makes its Secret from the files `ocimirror keygen`
/// writes (git-ignored), so applying without them stops at once; and a key file left empty or
/// absent in the pod is refused by ocimirror with a message naming the file and the command,
/// not a PEM parse error.
#[test]
fn kubernetes_manifests_ship_no_signing_key_and_an_unwritten_one_is_refused_readably() {
    let (_, docs) = plain_manifests();
    for s in docs.iter().filter(|d| kind(d) == "Secret") {
        let data = object_data(s);
        for k in ["token.key", "token.crt"] {
            assert!(
                !data.contains_key(k),
                "Secret {} ships {k}: every apply would carry a placeholder key",
                name(s)
            );
        }
    }
    let kustomization = parse_yaml(&read("deploy/kubernetes/kustomization.yaml"));
    let generators = kustomization["secretGenerator"]
        .as_array()
        .expect("a secretGenerator for the signing key");
    let token = generators
        .iter()
        .find(|g| {
            g["files"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "token.key"))
        })
        .expect("a secretGenerator from token.key");
    let ignored = read("deploy/kubernetes/.gitignore");
    for f in token["files"].as_array().unwrap() {
        let f = str_of(f, "files");
        assert!(
            ignored.lines().any(|l| l.trim() == f),
            "{f} is not git-ignored: a key pair could be committed"
        );
    }
    let deployment = the(&docs, "Deployment");
    let expected: BTreeSet<String> = [str_of(&token["name"], "name").to_owned()].into();
    assert_eq!(
        operator_secrets(&docs, deployment),
        expected,
        "the Deployment names Secrets that neither the manifests nor the generator make"
    );
    // kustomize adds no hash suffix (the Deployment names the Secret as is).
    assert_eq!(token["options"]["disableNameSuffixHash"], true);

    let mut view = pod_view(&docs, deployment);
    let config = view.config();
    let key = str_of(&config["auth"]["key"], "auth.key").to_owned();
    let cert = str_of(&config["auth"]["certificate"], "auth.certificate").to_owned();
    view.files.insert(key.clone(), Vec::new());
    view.files.insert(cert.clone(), b"\n".to_vec());
    let (ok, log) = view.run_config_check("empty key");
    assert!(!ok, "an empty signing key is accepted:\n{log}");
    for part in [
        format!("{key} is empty"),
        format!("{cert} is empty"),
        "ocimirror keygen".to_owned(),
    ] {
        assert!(log.contains(&part), "the message lacks {part:?}:\n{log}");
    }
    assert!(
        !log.contains("PEM"),
        "a PEM error instead of what to do:\n{log}"
    );
    view.files.remove(&key);
    let (ok, log) = view.run_config_check("absent key");
    assert!(!ok, "an absent signing key is accepted:\n{log}");
    assert!(
        log.contains(&format!("{key} does not exist")) && log.contains("ocimirror keygen"),
        "{log}"
    );
}

/// The chart rendered with each of [`CHART_VALUES`]: `helm lint --strict` is clean (with the
/// chart's own defaults too), and the output passes yamllint, the Kubernetes schemas and
/// [`check_kubernetes_objects`]; its ConfigMap holds `config` from the values, unchanged.
#[test]
fn helm_chart_renders_to_valid_objects_whose_config_ocimirror_accepts() {
    if !(have_helm() && have_yamllint() && have_kubernetes_validate()) {
        return;
    }
    if let Err(e) = lint_chart(&[]) {
        panic!("{CHART} with its own defaults: helm lint:\n{e}");
    }
    let (_, plain) = plain_manifests();
    for values in CHART_VALUES {
        let what = format!("{CHART} with {values}");
        if let Err(e) = lint_chart(&[values]) {
            panic!("{what}: helm lint:\n{e}");
        }
        let rendered = render_chart(&[values]);
        let docs = parse_yaml_docs(&rendered);
        lint_and_validate(&what, &rendered);
        check_kubernetes_objects(&what, &docs);

        // values.config is the config file, key for key (Helm merges a values file into the
        // defaults).
        let config = chart_values(&[values])["config"].clone();
        let configmap = docs
            .iter()
            .find(|d| kind(d) == "ConfigMap" && d["data"].get("config.yaml").is_some())
            .unwrap_or_else(|| panic!("{what}: no ConfigMap with config.yaml"));
        let mut in_configmap = parse_yaml(str_of(&configmap["data"]["config.yaml"], "config.yaml"));
        if chart_values(&[values])["cluster"]["enabled"] == true {
            // The one section the chart writes itself.
            assert!(
                in_configmap
                    .as_object_mut()
                    .unwrap()
                    .remove("cluster")
                    .is_some(),
                "{what}: cluster.enabled without the cluster section"
            );
        }
        assert_eq!(
            in_configmap, config,
            "{what}: the ConfigMap is not values.config"
        );

        // The fleet values turn on every object the plain manifests have (but the Secrets,
        // which they name instead, as GitOps needs), and the rest.
        if values == FLEET_VALUES {
            let kinds = |d: &[Value]| {
                d.iter()
                    .map(|x| kind(x).to_owned())
                    .collect::<BTreeSet<_>>()
            };
            let missing: Vec<String> = kinds(&plain)
                .difference(&kinds(&docs))
                .filter(|k| *k != "Secret")
                .cloned()
                .collect();
            assert!(missing.is_empty(), "{what}: no {missing:?}");
            assert!(
                pod_config(&docs, the(&docs, "Deployment"))
                    .get("cluster")
                    .is_some(),
                "{what}: the fleet's replicas have no cluster section"
            );
            for k in [
                "NetworkPolicy",
                "PrometheusRule",
                "ServiceAccount",
                "Pod",
                "HorizontalPodAutoscaler",
            ] {
                assert!(kinds(&docs).contains(k), "{what}: no {k}");
            }
        }
    }
}

/// yamllint and the Kubernetes schemas on the chart's rendered output. The dashboard's JSON
/// (long PromQL lines) is linted with the line length left out.
fn lint_and_validate(what: &str, rendered: &str) {
    let dir = TempDir::new().unwrap();
    let mut rest = String::new();
    let mut dash = String::new();
    for doc in rendered.split("\n---\n") {
        let doc = doc.trim_start_matches("---\n");
        let out = if doc.contains("\n  ocimirror.json: ") {
            &mut dash
        } else {
            &mut rest
        };
        out.push_str("---\n");
        out.push_str(doc.trim_end());
        out.push('\n');
    }
    let file = dir.path().join("rendered.yaml");
    fs::write(&file, &rest).unwrap();
    if let Err(e) = yamllint(&[&file]) {
        panic!("{what}: yamllint of the rendered chart:\n{e}\n{rest}");
    }
    let mut files = vec![file];
    if !dash.is_empty() {
        let f = dir.path().join("dashboard.yaml");
        fs::write(&f, &dash).unwrap();
        let config = dir.path().join("yamllint-dashboard.yaml");
        fs::write(
            &config,
            format!(
                "extends: {}\nrules:\n  line-length: disable\n",
                root().join("deploy/.yamllint").display()
            ),
        )
        .unwrap();
        let out = run(command("yamllint")
            .args(["-s", "-f", "parsable", "-c"])
            .arg(&config)
            .arg(&f));
        assert!(
            out.status.success(),
            "{what}: yamllint of the dashboard:\n{}",
            text(&out)
        );
        files.push(f);
    }
    if let Err(e) = kubernetes_validate(&files) {
        panic!("{what}: {e}");
    }
}

/// Two renders are identical, so `helm upgrade` and GitOps syncs change nothing: with the
/// signing key from `signingKey.existingSecret` byte for byte, with a generated key but for
/// that key (which a real upgrade reads back from the cluster).
#[test]
fn helm_chart_renders_identically_twice() {
    if !have_helm() {
        return;
    }
    for values in CHART_VALUES {
        let what = format!("{CHART} with {values}");
        let (a, b) = (render_chart(&[values]), render_chart(&[values]));
        let v = chart_values(&[values]);
        let generates =
            v["config"].get("auth").is_some() && v["signingKey"]["existingSecret"] == "";
        if !generates {
            assert_eq!(a, b, "{what}: two renders differ");
            continue;
        }
        let (da, db) = (parse_yaml_docs(&a), parse_yaml_docs(&b));
        assert_eq!(da.len(), db.len(), "{what}: object counts differ");
        for (x, y) in da.iter().zip(&db) {
            if kind(x) == "Secret" && name(x).ends_with("-keys") {
                assert_eq!(
                    x["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
                    "{what}: the generated key is deleted with the release"
                );
                let strip = |d: &Value| {
                    let mut d = d.clone();
                    d.as_object_mut().unwrap().remove("data");
                    d
                };
                assert_eq!(strip(x), strip(y), "{what}: {}", name(x));
                continue;
            }
            // The Deployment above all: nothing of the key reaches the pod template, so an
            // upgrade does not restart the pods.
            assert_eq!(x, y, "{what}: {} {} differs", kind(x), name(x));
        }
        // The generated key is a real one.
        let keys = da
            .iter()
            .find(|d| kind(d) == "Secret" && name(d).ends_with("-keys"))
            .unwrap_or_else(|| panic!("{what}: no generated key"));
        let data = object_data(keys);
        let dir = TempDir::new().unwrap();
        for f in ["token.key", "token.crt"] {
            fs::write(dir.path().join(f), &data[f]).unwrap();
        }
        fs::write(
            dir.path().join("c.yaml"),
            format!(
                "auth:\n  key: {}\n  certificate: {}\n  users: {{\"\": {{}}}}\n",
                dir.path().join("token.key").display(),
                dir.path().join("token.crt").display()
            ),
        )
        .unwrap();
        let out = run(Command::new(common::ocimirror_bin())
            .args(["config", "check"])
            .arg(dir.path().join("c.yaml"))
            .env_clear());
        assert!(
            out.status.success(),
            "{what}: ocimirror refuses the generated key: {}",
            text(&out)
        );
    }
}

/// Each combination that cannot work is refused at render time, with a message that says what
/// to change; the adapted ones render.
#[test]
fn helm_chart_refuses_combinations_that_cannot_work() {
    if !have_helm() {
        return;
    }
    match try_render_chart(&[]) {
        Ok(_) => panic!("the chart renders without image.repository"),
        Err(e) => assert!(e.contains("image.repository is required"), "{e}"),
    }
    let refused: &[(&str, &str)] = &[
        (
            "podDisruptionBudget: {enabled: true}",
            "node drains would block",
        ),
        (
            "podDisruptionBudget: {enabled: true, maxUnavailable: 0}",
            "forbids every eviction",
        ),
        (
            "persistence: {enabled: true}\nautoscaling: {enabled: true}",
            "one ReadWriteOnce claim",
        ),
        (
            "persistence: {enabled: true}\nreplicaCount: 2",
            "one ReadWriteOnce claim",
        ),
        (
            "replicaCount: 2",
            "need storage.backend s3 and cache.backend redis",
        ),
        ("config: {expiry: null}", "no config.expiry.max_size"),
        (
            "secret: {upstreamPassword: x}",
            "config.upstream.password_file is not /run/secrets/ocimirror/upstream-password",
        ),
        (
            "secret: {s3SecretAccessKey: x}",
            "config.storage.s3.secret_access_key_file is not",
        ),
        (
            "config: {auth: {key: /etc/token.key}}",
            "config.auth.key and config.auth.certificate must be",
        ),
        (
            "config: {tls: {certificate: /run/secrets/ocimirror/tls.crt, key: /run/secrets/ocimirror/tls.key}}",
            "config.tls needs tls.existingSecret",
        ),
        (
            "cluster: {enabled: true}\nconfig: {cluster: {listen: \":5001\"}}",
            "remove config.cluster",
        ),
        ("bogus: 1", "additional properties 'bogus' not allowed"),
        ("replicaCount: \"2\"", "want integer"),
        (
            "ingress: {paths: [/v2]}",
            "additional properties 'paths' not allowed",
        ),
        ("image: {digest: latest}", "/image/digest"),
    ];
    let dir = TempDir::new().unwrap();
    for (i, (yaml, message)) in refused.iter().enumerate() {
        let f = values_file(&dir, &format!("refused-{i}.yaml"), yaml);
        match try_render_chart(&[DEFAULT_VALUES, &f]) {
            Ok(_) => panic!("the chart renders with {yaml:?}"),
            Err(e) => assert!(
                e.contains(message),
                "with {yaml:?} the chart says\n{e}\nnot {message:?}"
            ),
        }
    }
    // The adapted versions render and pass the checks.
    for yaml in [
        "podDisruptionBudget: {enabled: true, maxUnavailable: 1}",
        "podDisruptionBudget: {enabled: true, maxUnavailable: \"50%\"}",
    ] {
        let docs = render_with(yaml);
        check_kubernetes_objects(yaml, &docs);
    }
}

/// The probes, the ServiceMonitor, the test pod and the Ingress's backend follow `config.tls`:
/// HTTPS with it (and ocimirror accepts the config with the TLS Secret's files), HTTP without.
#[test]
fn helm_chart_probes_and_scrapes_follow_tls() {
    if !(have_helm() && have_kubernetes_validate()) {
        return;
    }
    let monitored = "serviceMonitor: {enabled: true}\ningress: {enabled: true}\n";
    for (tls, scheme) in [
        (
            "config:\n  tls:\n    certificate: /run/secrets/ocimirror/tls.crt\n    key: /run/secrets/ocimirror/tls.key\ntls: {existingSecret: ocimirror-serving}\n",
            "https",
        ),
        ("", "http"),
    ] {
        let rendered = render_text_with(&format!("{monitored}{tls}"));
        let docs = parse_yaml_docs(&rendered);
        let what = format!("{CHART} serving {scheme}");
        lint_and_validate(&what, &rendered);
        check_kubernetes_objects(&what, &docs);
        let container = ocimirror_container(the(&docs, "Deployment"));
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            assert_eq!(
                container[probe]["httpGet"]["scheme"],
                scheme.to_ascii_uppercase(),
                "{what}: {probe}"
            );
        }
        let sm = the(&docs, "ServiceMonitor");
        assert_eq!(sm["spec"]["endpoints"][0]["scheme"], scheme, "{what}");
        if scheme == "https" {
            assert_eq!(
                sm["spec"]["endpoints"][0]["tlsConfig"]["insecureSkipVerify"], true,
                "{what}: Prometheus cannot check a certificate for the public name"
            );
            let deployment = the(&docs, "Deployment");
            assert_eq!(
                operator_secrets(&docs, deployment),
                ["ocimirror-serving".to_owned()].into(),
                "{what}"
            );
        }
    }
}

/// The Ingress routes the token endpoint wherever `config.auth.path` puts it, and only the
/// paths ocimirror serves (plus `ingress.extraPaths`).
#[test]
fn helm_chart_ingress_follows_the_token_path() {
    if !have_helm() {
        return;
    }
    for (yaml, paths) in [
        ("ingress: {enabled: true}", vec!["/v2", "/auth"]),
        (
            "ingress: {enabled: true}\nconfig: {auth: {path: /token}}",
            vec!["/v2", "/token"],
        ),
        (
            "ingress: {enabled: true, extraPaths: [/]}\nconfig: {auth: null}",
            vec!["/v2", "/"],
        ),
    ] {
        let docs = render_with(yaml);
        check_kubernetes_objects(yaml, &docs);
        let routed: Vec<&str> = the(&docs, "Ingress")["spec"]["rules"][0]["http"]["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| str_of(&p["path"], "path"))
            .collect();
        assert_eq!(routed, paths, "{yaml}");
    }
}

/// `nameOverride` and `fullnameOverride` rename every object, and the objects still find each
/// other.
#[test]
fn helm_chart_names_follow_the_overrides() {
    if !have_helm() {
        return;
    }
    let all_on = "ingress: {enabled: true}\nserviceMonitor: {enabled: true}\nnetworkPolicy: {enabled: true}\n";
    for (yaml, full, app) in [
        ("fullnameOverride: mirror\n", "mirror", "ocimirror"),
        ("nameOverride: cache\n", "ocimirror-cache", "cache"),
    ] {
        let docs = render_with(&format!("{all_on}{yaml}"));
        check_kubernetes_objects(yaml, &docs);
        for d in &docs {
            assert!(
                name(d).starts_with(full),
                "{yaml}: {} {} is not named after {full}",
                kind(d),
                name(d)
            );
        }
        assert_eq!(
            the(&docs, "Deployment")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
            app,
            "{yaml}"
        );
    }
}

/// A changed credential changes the pods' `checksum/secret`, so `helm upgrade` restarts them;
/// the config's checksum stays. The credential is a file in the secret directory.
#[test]
fn helm_chart_restarts_pods_when_credentials_change() {
    if !have_helm() {
        return;
    }
    let render = |password: &str| {
        render_with(&format!(
            "config:\n  upstream:\n    username: bot\n    password_file: /run/secrets/ocimirror/upstream-password\nsecret: {{upstreamPassword: {password}}}\n"
        ))
    };
    let (a, b) = (render("first"), render("second"));
    check_kubernetes_objects("credentials", &a);
    let annotations = |docs: &[Value]| {
        the(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"].clone()
    };
    let (aa, ab) = (annotations(&a), annotations(&b));
    assert!(
        aa["checksum/secret"].is_string(),
        "no checksum/secret: {aa}"
    );
    assert_ne!(
        aa["checksum/secret"], ab["checksum/secret"],
        "a changed credential does not restart the pods"
    );
    assert_eq!(aa["checksum/config"], ab["checksum/config"]);
    let view = pod_view(&a, the(&a, "Deployment"));
    assert_eq!(
        view.files[&format!("{SECRET_DIR}/upstream-password")],
        b"first",
        "the credential is not the file the config names"
    );
    // A Secret made elsewhere has no checksum to follow.
    let docs = render_with("secret: {existingSecret: creds}");
    assert!(annotations(&docs).get("checksum/secret").is_none());
}

/// The filesystem cache stays below the volume it lives in: `expiry.max_size` under the
/// emptyDir's `sizeLimit` (or the claim's size), so the kubelet never evicts the pod for
/// filling it.
#[test]
fn helm_chart_keeps_the_filesystem_cache_below_its_volume() {
    if !have_helm() {
        return;
    }
    for values in [DEFAULT_VALUES, PERSISTENCE_VALUES] {
        let docs = parse_yaml_docs(&render_chart(&[values]));
        let deployment = the(&docs, "Deployment");
        let config = pod_config(&docs, deployment);
        assert_eq!(config["storage"]["backend"], "filesystem", "{values}");
        let max_size =
            ocimirror::config::parse_size(str_of(&config["expiry"]["max_size"], "expiry.max_size"))
                .unwrap();
        let data = deployment["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "data")
            .unwrap();
        let volume = match data.get("emptyDir") {
            Some(e) => quantity_bytes(str_of(&e["sizeLimit"], "sizeLimit")),
            None => {
                let pvc = the(&docs, "PersistentVolumeClaim");
                quantity_bytes(str_of(
                    &pvc["spec"]["resources"]["requests"]["storage"],
                    "storage",
                ))
            }
        };
        assert!(
            max_size < volume * 9 / 10,
            "{values}: expiry.max_size {max_size} leaves no room below the volume's {volume}"
        );
    }
}

/// Peer streaming: with `cluster.enabled` the pod gets the peer port, its address from the
/// downward API as `cluster.advertise`, the shared secret as a file, and the config its
/// `cluster` section, which ocimirror accepts; only the replicas reach the port.
#[test]
fn helm_chart_cluster_renders_port_address_and_secret_that_ocimirror_accepts() {
    if !(have_helm() && have_kubernetes_validate()) {
        return;
    }
    let off = render_with("");
    let deployment = the(&off, "Deployment");
    assert!(
        !pod_config(&off, deployment)
            .as_object()
            .unwrap()
            .contains_key("cluster"),
        "the cluster section without cluster.enabled"
    );
    assert!(
        !ocimirror_container(deployment)["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "OCIMIRROR_CLUSTER__ADVERTISE"),
        "cluster.advertise without cluster.enabled"
    );
    let rendered =
        render_text_with("cluster: {enabled: true, port: 5002}\nnetworkPolicy: {enabled: true}");
    let docs = parse_yaml_docs(&rendered);
    let what = "cluster.enabled";
    lint_and_validate(what, &rendered);
    // The peer wiring (check_cluster_wiring), the NetworkPolicy, and `config check`.
    check_kubernetes_objects(what, &docs);
    let deployment = the(&docs, "Deployment");
    let container = ocimirror_container(deployment);
    let env = container["env"].as_array().unwrap();
    let pos = |n: &str| env.iter().position(|e| e["name"] == n);
    let pod_ip = pos("POD_IP").expect("POD_IP");
    assert_eq!(
        env[pod_ip]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    let advertise = pos("OCIMIRROR_CLUSTER__ADVERTISE").expect("cluster.advertise");
    assert!(pod_ip < advertise, "POD_IP must come first to be expanded");
    assert_eq!(env[advertise]["value"], "http://$(POD_IP):5002");
    let np = the(&docs, "NetworkPolicy");
    assert!(
        np["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["ports"][0]["port"] == "cluster"),
        "the NetworkPolicy has no rule for the peer port"
    );

    let view = pod_view(&docs, deployment);
    let config = view.config();
    assert_eq!(
        config["cluster"],
        json!({"listen": ":5002", "secret_file": format!("{SECRET_DIR}/cluster-secret")})
    );
    // Generated once into the keys Secret: long enough for ocimirror (16 characters at least).
    let secret = &view.files[&format!("{SECRET_DIR}/cluster-secret")];
    assert!(secret.len() >= 32, "a short cluster secret");
    assert!(
        secret.iter().all(|b| b.is_ascii_alphanumeric()),
        "the cluster secret must be one word"
    );
    // Without the advertised address, ocimirror refuses the section: the check can fail.
    let mut without = pod_view(&docs, deployment);
    without
        .env
        .retain(|(k, _)| k != "OCIMIRROR_CLUSTER__ADVERTISE");
    let (ok, log) = without.run_config_check(what);
    assert!(
        !ok && log.contains("cluster.advertise"),
        "config check accepts a cluster section without advertise: {log}"
    );
}

/// The chart README's values table lists exactly the values of `values.schema.json`, and
/// every key of `values.yaml` is in the schema (which refuses unknown ones).
#[test]
fn helm_chart_readme_documents_every_value() {
    let schema: Value =
        serde_json::from_str(&read(&format!("{CHART}/values.schema.json"))).unwrap();
    fn leaves(prefix: &str, s: &Value, out: &mut BTreeSet<String>) {
        match s["properties"].as_object() {
            Some(props) => {
                for (k, v) in props {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&path, v, out);
                }
            }
            None => {
                out.insert(prefix.to_owned());
            }
        }
    }
    let mut in_schema = BTreeSet::new();
    leaves("", &schema, &mut in_schema);
    assert_eq!(
        schema["additionalProperties"], false,
        "the schema must refuse unknown keys"
    );

    fn value_paths(prefix: &str, v: &Value, schema: &Value, out: &mut BTreeSet<String>) {
        match (v.as_object(), schema["properties"].as_object()) {
            (Some(map), Some(_)) => {
                for (k, x) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    value_paths(&path, x, &schema["properties"][k], out);
                }
            }
            _ => {
                out.insert(prefix.to_owned());
            }
        }
    }
    let values = parse_yaml(&read(&format!("{CHART}/values.yaml")));
    let mut in_values = BTreeSet::new();
    value_paths("", &values, &schema, &mut in_values);
    let unknown: Vec<&String> = in_values.difference(&in_schema).collect();
    assert!(
        unknown.is_empty(),
        "values.yaml keys the schema lacks: {unknown:?}"
    );

    let readme = read(&format!("{CHART}/README.md"));
    let table = &readme[readme.find("## Values").expect("a Values section")..];
    let table = &table[..table[3..].find("\n## ").map_or(table.len(), |i| i + 3)];
    let code = regex::Regex::new(r"`([^`]+)`").unwrap();
    let mut documented = BTreeSet::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split('|').nth(1).unwrap();
        let mut parent = String::new();
        for (i, c) in code.captures_iter(first).enumerate() {
            let p = c[1].to_owned();
            let full = if i > 0 && !p.contains('.') && !parent.is_empty() {
                format!("{parent}.{p}")
            } else {
                p
            };
            if i == 0 {
                parent = full
                    .rsplit_once('.')
                    .map(|(a, _)| a.to_owned())
                    .unwrap_or_default();
            }
            documented.insert(full);
        }
    }
    let undocumented: Vec<&String> = in_schema.difference(&documented).collect();
    let stray: Vec<&String> = documented.difference(&in_schema).collect();
    assert!(
        undocumented.is_empty() && stray.is_empty(),
        "the chart README's values table: undocumented {undocumented:?}, not values {stray:?}"
    );
}

/// The Grafana dashboard: its "Blob cache hit ratio" counts blobs only, its queries use
/// metrics and labels ocimirror exports, and the chart's copy (the sidecar's ConfigMap) is the
/// same file.
#[test]
fn grafana_dashboard_counts_blobs_in_the_blob_hit_ratio_and_ships_with_the_chart() {
    let file = read("deploy/grafana/ocimirror-dashboard.json");
    assert_eq!(
        file,
        read(&format!("{CHART}/dashboards/ocimirror.json")),
        "the chart's dashboards/ocimirror.json is not deploy/grafana/ocimirror-dashboard.json"
    );
    let dash: Value = serde_json::from_str(&file).unwrap();
    let metrics = source_metrics();
    let panels = dash["panels"].as_array().unwrap();
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = str_of(&t["expr"], "expr").replace("$job", "x");
            check_promql(&format!("panel {}", p["title"]), &expr, &metrics);
        }
    }
    let ratio = panels
        .iter()
        .find(|p| p["title"] == "Blob cache hit ratio")
        .expect("a Blob cache hit ratio panel");
    let sel = regex::Regex::new(r"ocimirror_cache_(?:hits|misses)_total\s*(\{[^}]*\})?").unwrap();
    let mut n = 0;
    for t in ratio["targets"].as_array().unwrap() {
        for c in sel.captures_iter(str_of(&t["expr"], "expr")) {
            n += 1;
            assert!(
                c.get(1)
                    .is_some_and(|m| m.as_str().contains(r#"kind="blob""#)),
                "the blob hit ratio counts {} (manifests too)",
                &c[0]
            );
        }
    }
    assert!(n >= 2, "the ratio queries no hit and miss counters");

    if !have_helm() {
        return;
    }
    let docs = parse_yaml_docs(&render_chart(&[FLEET_VALUES]));
    let cm = docs
        .iter()
        .find(|d| kind(d) == "ConfigMap" && d["data"].get("ocimirror.json").is_some())
        .expect("the dashboard ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let in_cm: Value = serde_json::from_str(str_of(&cm["data"]["ocimirror.json"], "json")).unwrap();
    assert_eq!(in_cm, dash, "the ConfigMap's dashboard is not the file");
}

/// The compose file, as `docker compose` would read it (variables unset, so their defaults).
fn compose() -> Value {
    parse_yaml(&interpolate(&read("deploy/compose/compose.yaml")))
}

#[test]
fn compose_file_matches_the_compose_specification() {
    if !have_python_module("compose_spec", "compose-spec") {
        return;
    }
    let out = tools_py(&["compose-check", "deploy/compose/compose.yaml"]);
    assert!(out.status.success(), "{}", text(&out));
}
#[test]
fn compose_services_agree_and_their_config_ocimirror_accepts() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    let mut replicas = Vec::new();
    for (sname, svc) in services {
        for dep in svc["depends_on"]
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .or_else(|| {
                svc["depends_on"].as_array().map(|a| {
                    a.iter()
                        .map(|d| str_of(d, "depends_on").to_owned())
                        .collect()
                })
            })
            .unwrap_or_default()
        {
            assert!(
                services.contains_key(&dep),
                "{sname} depends on unknown {dep}"
            );
        }
        let command: Vec<&str> = svc["command"]
            .as_array()
            .map(|a| a.iter().map(|c| str_of(c, "command")).collect())
            .unwrap_or_default();
        if command.first() == Some(&"serve") {
            replicas.push((sname.clone(), svc.clone()));
        }
    }
    assert!(replicas.len() >= 2, "at least two ocimirror replicas");

    // Each replica's config, with its bind-mounted files and named volumes; a named volume
    // that a one-shot service fills with `ocimirror keygen` gets a key pair.
    let keygen_cmd =
        regex::Regex::new(r"ocimirror keygen --key (\S+)\s+--certificate (\S+)").unwrap();
    let written_file = regex::Regex::new(r"> (/\S+)").unwrap();
    let mut listen_ports = BTreeSet::new();
    let mut auth_paths = BTreeSet::new();
    for (sname, svc) in &replicas {
        let mut view = ContainerView {
            args: svc["command"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| str_of(c, "command").to_owned())
                .collect(),
            ..Default::default()
        };
        for v in svc["volumes"].as_array().expect("volumes") {
            let parts: Vec<&str> = str_of(v, "volume").split(':').collect();
            let (src, dst) = (parts[0], parts[1].trim_end_matches('/'));
            view.mounts.push(dst.to_owned());
            if src.starts_with('.') || src.starts_with('/') {
                let host = root().join("deploy/compose").join(src);
                if host.is_dir() {
                    view.dirs.push(dst.to_owned());
                    for e in fs::read_dir(&host).unwrap() {
                        let p = e.unwrap().path();
                        let f = p.file_name().unwrap().to_str().unwrap();
                        view.files
                            .insert(format!("{dst}/{f}"), fs::read(&p).unwrap());
                    }
                } else {
                    assert!(host.is_file(), "{sname}: bind mount {src} does not exist");
                    view.files.insert(dst.to_owned(), fs::read(host).unwrap());
                }
                continue;
            }
            assert!(
                compose["volumes"].get(src).is_some(),
                "{sname}: volume {src} is not declared"
            );
            view.dirs.push(dst.to_owned());
            for (other, o) in services {
                let mounts_it = o["volumes"].as_array().into_iter().flatten().any(|ov| {
                    ov.as_str()
                        .is_some_and(|s| s.split(':').next() == Some(src))
                });
                let cmd = o["command"].as_array().map(|c| {
                    c.iter()
                        .map(|x| x.as_str().unwrap_or(""))
                        .collect::<Vec<_>>()
                        .join(" ")
                });
                if let (true, Some(cmd)) = (mounts_it, cmd)
                    && let Some(c) = keygen_cmd.captures(&cmd)
                {
                    assert!(
                        o["restart"] == "no"
                            && svc["depends_on"][other.as_str()]["condition"]
                                == "service_completed_successfully",
                        "{sname}: must wait for {other} to have written the key"
                    );
                    view.keygen(&c[1], &c[2]);
                    // Any other file the one-shot service writes into the volume (the cluster
                    // secret): generated there, so a stand-in of the same form.
                    for w in written_file.captures_iter(&cmd) {
                        view.files
                            .entry(w[1].to_owned())
                            .or_insert_with(|| b"0123456789abcdef0123456789abcdef".to_vec());
                    }
                }
            }
        }
        if let Some(env) = svc["environment"].as_object() {
            for (k, v) in env {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                view.env.push((k.clone(), v));
            }
        }
        let config_path = view.config_path().to_owned();
        let config = parse_yaml(std::str::from_utf8(&view.files[&config_path]).unwrap());
        // The config comes from a mounted directory, not a single-file bind mount: an editor
        // that replaces the file (a new inode) would leave the container on the old one.
        let config_dir = Path::new(&config_path).parent().unwrap().to_str().unwrap();
        assert!(
            svc["volumes"].as_array().unwrap().iter().any(|v| {
                let parts: Vec<&str> = str_of(v, "volume").split(':').collect();
                parts[1].trim_end_matches('/') == config_dir
                    && root().join("deploy/compose").join(parts[0]).is_dir()
            }),
            "{sname}: the config {config_path} is not in a bind-mounted directory"
        );
        // Hardened as the Kubernetes pods are.
        assert_eq!(svc["read_only"], true, "{sname}: read_only");
        assert!(
            svc["cap_drop"]
                .as_array()
                .is_some_and(|c| c.iter().any(|x| x == "ALL")),
            "{sname}: cap_drop ALL"
        );
        // Health-checked by ocimirror itself, on its listen port's /healthz.
        let test: Vec<&str> = svc["healthcheck"]["test"]
            .as_array()
            .unwrap_or_else(|| panic!("{sname}: no healthcheck"))
            .iter()
            .map(|t| str_of(t, "healthcheck.test"))
            .collect();
        assert_eq!(test[0], "CMD", "{sname}: healthcheck in exec form");
        assert!(
            test[1].ends_with("/ocimirror") && test[2] == "healthcheck",
            "{sname}: the healthcheck is not `ocimirror healthcheck`: {test:?}"
        );
        let url = test
            .iter()
            .position(|t| *t == "--url")
            .map(|i| test[i + 1])
            .unwrap_or("http://127.0.0.1:5000/healthz");
        assert_eq!(
            url,
            format!(
                "{}://127.0.0.1:{}/healthz",
                config_scheme(&config),
                listen_port(&config)
            ),
            "{sname}: the healthcheck asks another port"
        );
        assert_eq!(
            config["storage"]["backend"], "s3",
            "{sname}: replicas share S3"
        );
        assert_eq!(
            config["cache"]["backend"], "redis",
            "{sname}: replicas share Redis"
        );
        assert!(
            config.get("auth").is_some(),
            "{sname}: the token service is on"
        );
        listen_ports.insert(listen_port(&config));
        auth_paths.insert(
            config["auth"]["path"]
                .as_str()
                .unwrap_or("/auth")
                .to_owned(),
        );
        // The S3 and Redis hosts are compose services.
        for url in [
            &config["storage"]["s3"]["endpoint"],
            &config["cache"]["redis"]["url"],
        ] {
            let host = url::Url::parse(str_of(url, "url")).unwrap();
            let host = host.host_str().unwrap();
            assert!(
                services.contains_key(host),
                "{sname}: {host} is not a compose service"
            );
        }
        // Peer streaming: each replica advertises its own service name on its peer port, which
        // is not published; the shared secret is in its volumes.
        let cluster = &config["cluster"];
        assert!(
            cluster.is_object(),
            "{sname}: the replicas have no cluster section"
        );
        let peer = port_of(cluster["listen"].as_str().unwrap_or(":5001"));
        let advertise = view
            .env
            .iter()
            .find(|(k, _)| k == "OCIMIRROR_CLUSTER__ADVERTISE")
            .map(|(_, v)| v.as_str())
            .or(cluster["advertise"].as_str())
            .unwrap_or_else(|| panic!("{sname}: no cluster.advertise"));
        assert_eq!(
            advertise,
            format!("http://{sname}:{peer}"),
            "{sname}: cluster.advertise is not this replica's own address"
        );
        assert!(
            svc["ports"].is_null(),
            "{sname}: publishes ports (the peer port must stay on the compose network)"
        );
        let secret = str_of(&cluster["secret_file"], "cluster.secret_file");
        assert!(
            view.files.contains_key(secret),
            "{sname}: cluster.secret_file {secret} is in no volume, nor written by a one-shot service"
        );
        view.config_check(&format!("deploy/compose service {sname}"));
    }

    // The proxy sends /v2 and the token endpoint to every replica, on its listen port.
    let caddyfile = read("deploy/compose/Caddyfile");
    let proxy = services
        .values()
        .find(|s| {
            s["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v.as_str().is_some_and(|v| v.starts_with("./Caddyfile:")))
        })
        .expect("a service runs the Caddyfile");
    assert!(
        proxy["ports"].as_array().is_some_and(|p| !p.is_empty()),
        "the proxy publishes a port"
    );
    for (sname, _) in &replicas {
        assert_eq!(
            proxy["depends_on"][sname.as_str()]["condition"],
            "service_healthy",
            "the proxy starts before {sname} is healthy"
        );
    }
    for (sname, _) in &replicas {
        for port in &listen_ports {
            assert!(
                caddyfile.contains(&format!("{sname}:{port}")),
                "the Caddyfile does not proxy to {sname}:{port}"
            );
        }
    }
    let matcher = caddyfile
        .lines()
        .find(|l| l.trim_start().starts_with("@ocimirror path "))
        .expect("a path matcher @ocimirror");
    let paths: BTreeSet<&str> = matcher.split_whitespace().skip(2).collect();
    for p in ["/v2", "/v2/*"]
        .iter()
        .copied()
        .chain(auth_paths.iter().map(String::as_str))
    {
        assert!(paths.contains(p), "the Caddyfile does not route {p}");
    }
}

// ---------------------------------------------------------------------------------------------
// `ocimirror healthcheck`: the image's and compose's HEALTHCHECK
// ---------------------------------------------------------------------------------------------

fn healthcheck(args: &[&str]) -> Output {
    run(Command::new(common::ocimirror_bin())
        .arg("healthcheck")
        .args(args)
        .args(["--timeout", "5s"]))
}

/// Exit 0 while the mirror answers /healthz, 1 when it answers otherwise or not at all; over
/// HTTPS only with `--insecure` when the certificate is not trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_command_exits_by_the_mirrors_health() {
    let mut m = common::Mirror::start(common::MirrorOpts::upstream(&common::closed_url())).await;
    let healthz = format!("{}/healthz", m.url());
    let out = healthcheck(&["--url", &healthz]);
    assert!(out.status.success(), "a healthy mirror: {}", text(&out));
    assert!(text(&out).contains("200"), "{}", text(&out));

    let out = healthcheck(&["--url", &format!("{}/no-such-page", m.url())]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("answered 404"), "{}", text(&out));

    let out = healthcheck(&["--url", "ftp://127.0.0.1/healthz"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("not an http:// or https:// URL"),
        "{}",
        text(&out)
    );

    m.kill();
    let out = healthcheck(&["--url", &healthz]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a stopped mirror: {}",
        text(&out)
    );
    assert!(text(&out).contains("unhealthy"), "{}", text(&out));

    // HTTPS with a certificate for another name, as a container's loopback check sees it.
    let dir = TempDir::new().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["mirror.example.com".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    fs::write(dir.path().join("tls.crt"), cert.pem()).unwrap();
    fs::write(dir.path().join("tls.key"), key.serialize_pem()).unwrap();
    let port = common::free_port();
    let cfg = dir.path().join("config.yaml");
    fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\ndata_dir: {}\nupstream:\n  url: {}\ntls:\n  certificate: {}\n  key: {}\n",
            dir.path().join("data").display(),
            common::closed_url(),
            dir.path().join("tls.crt").display(),
            dir.path().join("tls.key").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(common::ocimirror_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/healthz");
    let mut up = false;
    for _ in 0..300 {
        assert!(child.try_wait().unwrap().is_none(), "the TLS mirror exited");
        if healthcheck(&["--url", &url, "--insecure"]).status.success() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let verified = healthcheck(&["--url", &url]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "the TLS mirror never answered with --insecure");
    assert_eq!(
        verified.status.code(),
        Some(1),
        "an untrusted certificate is accepted without --insecure"
    );
}
