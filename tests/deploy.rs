//! The deployment files: the Dockerfile, `deploy/compose`, `deploy/kubernetes` and the Helm chart
//! `deploy/helm/ocimirror`. No container engine or cluster runs here, so they are checked as
//! files, offline:
//!
//! - every YAML file under `deploy/` passes yamllint (`deploy/.yamllint`);
//! - every Kubernetes object, hand-written or rendered from the chart (Helm's Go SDK through
//!   helm-python-sdk), validates strictly against the Kubernetes schemas (kubernetes-validate,
//!   which ships them) of the oldest and newest versions in [`KUBE_VERSIONS`]; those schemas do
//!   not know the Prometheus operator's ServiceMonitor, which is checked by hand instead
//!   ([`check_service_monitor`]);
//! - the objects agree with each other and with ocimirror: selectors, ports, probe paths, the
//!   routed paths, the user the image runs as; and the config each pod or compose service would
//!   read, with the files it would have mounted, is accepted by `ocimirror config check`;
//! - the compose file matches the Compose specification (compose-spec);
//! - the Dockerfile builds the binary in one stage and runs it unprivileged in another.
//!
//! The Python tools are installed by `scripts/test.sh`; without one, the tests that need it skip
//! with a message, or fail when `OCIMIRROR_REQUIRE_ALL` is set.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::tool_or_skip;
use serde_json::Value;
use tempfile::TempDir;

/// Kubernetes versions whose schemas every object must pass.
const KUBE_VERSIONS: [&str; 2] = ["1.29", "1.37"];
/// Kinds outside the Kubernetes schemas: checked by [`check_service_monitor`].
const CRD_KINDS: [&str; 1] = ["ServiceMonitor"];
const CHART: &str = "deploy/helm/ocimirror";
/// Values the chart is rendered with: its defaults, and each file of its `ci/` directory.
const CHART_VALUES: [Option<&str>; 3] = [
    None,
    Some("deploy/helm/ocimirror/ci/fleet-values.yaml"),
    Some("deploy/helm/ocimirror/ci/persistence-values.yaml"),
];

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

/// The chart rendered as `helm template` would, with the values file `values` (or its
/// defaults).
fn render_chart(values: Option<&str>) -> String {
    let mut args = vec!["helm-render", CHART];
    args.extend(values);
    let out = tools_py(&args);
    assert!(
        out.status.success(),
        "rendering {CHART} with {values:?} failed:\n{}",
        text(&out)
    );
    String::from_utf8(out.stdout).unwrap()
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

    fn config_check(&self, what: &str) {
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
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
            "{what}: ocimirror config check refuses its config:\n{}\n--- config ---\n{}",
            text(&out),
            fs::read_to_string(&config).unwrap()
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

/// The ocimirror container of `deployment`, as it would see its volumes and environment.
/// Secret entries left empty for the operator to fill (the plain manifests' token.key and
/// token.crt) are filled with what `ocimirror keygen` writes, as their README says.
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
    let mut keygen: BTreeMap<String, String> = BTreeMap::new();
    for m in container["volumeMounts"].as_array().expect("volumeMounts") {
        let mount = str_of(&m["mountPath"], "mountPath").trim_end_matches('/');
        let vname = str_of(&m["name"], "volumeMounts.name");
        let vol = volumes
            .iter()
            .find(|v| v["name"] == vname)
            .unwrap_or_else(|| panic!("volumeMount {vname} has no volume"));
        view.mounts.push(mount.to_owned());
        view.dirs.push(mount.to_owned());
        let source = if vol.get("configMap").is_some() {
            Some((
                "ConfigMap",
                str_of(&vol["configMap"]["name"], "configMap.name"),
                &vol["configMap"],
            ))
        } else if vol.get("secret").is_some() {
            Some((
                "Secret",
                str_of(&vol["secret"]["secretName"], "secretName"),
                &vol["secret"],
            ))
        } else {
            assert!(
                vol.get("emptyDir").is_some() || vol.get("persistentVolumeClaim").is_some(),
                "volume {vname}: a kind this test does not lay out: {vol}"
            );
            None
        };
        let Some((k, obj_name, src)) = source else {
            continue;
        };
        let obj = named(docs, k, obj_name)
            .unwrap_or_else(|| panic!("volume {vname}: {k} {obj_name} is not in the manifests"));
        let data = object_data(obj);
        let items: Vec<(String, String)> = match src["items"].as_array() {
            Some(items) => items
                .iter()
                .map(|i| {
                    (
                        str_of(&i["key"], "items.key").to_owned(),
                        str_of(&i["path"], "items.path").to_owned(),
                    )
                })
                .collect(),
            None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
        };
        for (key, path) in items {
            let bytes = data
                .get(&key)
                .unwrap_or_else(|| panic!("volume {vname}: {k} {obj_name} has no key {key}"));
            let at = format!("{mount}/{path}");
            if bytes.is_empty() && (key == "token.key" || key == "token.crt") {
                keygen.insert(key, at);
            } else {
                view.files.insert(at, bytes.clone());
            }
        }
    }
    if !keygen.is_empty() {
        view.keygen(&keygen["token.key"], &keygen["token.crt"]);
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let n = str_of(&e["name"], "env.name").to_owned();
        if let Some(v) = e["value"].as_str() {
            view.env.push((n, v.to_owned()));
        } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
            let secret = str_of(&r["name"], "secretKeyRef.name");
            let key = str_of(&r["key"], "secretKeyRef.key");
            let value = named(docs, "Secret", secret).and_then(|s| object_data(s).remove(key));
            match value {
                Some(v) => view.env.push((n, String::from_utf8(v).unwrap())),
                None => assert!(
                    r["optional"] == true,
                    "env {n}: Secret {secret} has no key {key} and the reference is not optional"
                ),
            }
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
    let view = pod_view(docs, deployment);
    let path = view.config_path();
    let text = view
        .files
        .get(path)
        .unwrap_or_else(|| panic!("the config {path} is not in any mounted volume"));
    parse_yaml(std::str::from_utf8(text).unwrap())
}

// ---------------------------------------------------------------------------------------------
// Kubernetes objects agree with each other and with ocimirror
// ---------------------------------------------------------------------------------------------

/// The checks a set of Kubernetes objects for ocimirror must pass, whoever wrote them; the
/// config check included.
fn check_kubernetes_objects(what: &str, docs: &[Value]) {
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

    let config = pod_config(docs, deployment);
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
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{what}: {probe} path");
        assert_eq!(get["port"], "http", "{what}: {probe} port");
    }
    let service_ports = service["spec"]["ports"].as_array().expect("Service ports");
    assert!(
        service_ports
            .iter()
            .any(|p| p["name"] == "http" && p["targetPort"] == "http"),
        "{what}: the Service has no port http targeting the container's http port"
    );

    // The image's user (Dockerfile USER), checked by the kubelet.
    let pod_security = &deployment["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"], true, "{what}: runAsNonRoot");
    assert_eq!(
        pod_security["runAsUser"].as_u64(),
        Some(dockerfile_uid()),
        "{what}: runAsUser is not the image's USER"
    );
    // SIGTERM drains for server.shutdown_timeout; the kubelet must not kill it sooner.
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
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
    let scaled = docs.iter().any(|d| kind(d) == "HorizontalPodAutoscaler");
    if replicas > 1 || scaled {
        assert_eq!(
            config["storage"]["backend"], "s3",
            "{what}: replicas need S3"
        );
        assert_eq!(
            config["cache"]["backend"], "redis",
            "{what}: replicas need Redis"
        );
    }

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
    }
    if let Some(pdb) = docs.iter().find(|d| kind(d) == "PodDisruptionBudget") {
        assert!(
            labels_match(&pdb["spec"]["selector"]["matchLabels"], pod_labels),
            "{what}: the PodDisruptionBudget does not select the pods"
        );
    }
    if let Some(hpa) = docs.iter().find(|d| kind(d) == "HorizontalPodAutoscaler") {
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
    }
    for sm in docs.iter().filter(|d| kind(d) == "ServiceMonitor") {
        check_service_monitor(what, sm, service);
    }

    pod_view(docs, deployment).config_check(what);
}

/// The ServiceMonitor, which the Kubernetes schemas do not cover: the fields used are the
/// Prometheus operator's (monitoring.coreos.com/v1), and it scrapes `/metrics` through a port
/// of the ocimirror Service it selects.
fn check_service_monitor(what: &str, sm: &Value, service: &Value) {
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
        if let Some(i) = e["interval"].as_str() {
            duration_secs(i);
        }
    }
}

/// The plain manifests under deploy/kubernetes, in kustomization order.
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
    assert!(build.from.starts_with("rust:"), "built with a Rust image");
    assert!(
        build.instructions.iter().any(|(i, a)| i == "RUN"
            && a.contains("cargo build --release --locked")
            && a.contains("--bin ocimirror")),
        "the build stage runs cargo build --release --locked --bin ocimirror"
    );
    assert!(
        !last.from.starts_with("rust:"),
        "the final image has no toolchain"
    );
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
    ] {
        assert!(kinds.contains(k), "deploy/kubernetes has no {k}");
    }
    check_kubernetes_objects("deploy/kubernetes", &docs);
}

/// The chart rendered with each of [`CHART_VALUES`]: `helm lint --strict` is clean, and the
/// output passes yamllint, the Kubernetes schemas and [`check_kubernetes_objects`]; its
/// ConfigMap holds `config` from the values, unchanged.
#[test]
fn helm_chart_renders_to_valid_objects_whose_config_ocimirror_accepts() {
    if !(have_python_module("helm_python", "helm-python-sdk")
        && have_yamllint()
        && have_kubernetes_validate())
    {
        return;
    }
    let defaults = parse_yaml(&read(&format!("{CHART}/values.yaml")));
    let (_, plain) = plain_manifests();
    for values in CHART_VALUES {
        let what = format!("{CHART} with {}", values.unwrap_or("its default values"));
        let mut lint = vec!["helm-lint", CHART];
        lint.extend(values);
        let out = tools_py(&lint);
        assert!(out.status.success(), "{what}: helm lint:\n{}", text(&out));

        let rendered = render_chart(values);
        let dir = TempDir::new().unwrap();
        let file = dir.path().join("rendered.yaml");
        fs::write(&file, &rendered).unwrap();
        if let Err(e) = yamllint(&[&file]) {
            panic!("{what}: yamllint of the rendered chart:\n{e}\n{rendered}");
        }
        if let Err(e) = kubernetes_validate(std::slice::from_ref(&file)) {
            panic!("{what}: {e}\n{rendered}");
        }
        let docs = parse_yaml_docs(&rendered);
        check_kubernetes_objects(&what, &docs);

        // values.config is the config file, key for key.
        let config = values
            .map(|v| parse_yaml(&read(v)))
            .and_then(|v| v.get("config").cloned())
            .unwrap_or_else(|| defaults["config"].clone());
        let configmap = the(&docs, "ConfigMap");
        let in_configmap = parse_yaml(str_of(&configmap["data"]["config.yaml"], "config.yaml"));
        assert_eq!(
            in_configmap, config,
            "{what}: the ConfigMap is not values.config"
        );

        // The fleet values turn on every object the plain manifests have.
        if values.is_some_and(|v| v.ends_with("fleet-values.yaml")) {
            let kinds = |d: &[Value]| {
                d.iter()
                    .map(|x| kind(x).to_owned())
                    .collect::<BTreeSet<_>>()
            };
            assert_eq!(
                kinds(&docs),
                kinds(&plain),
                "{what}: not the plain manifests' kinds"
            );
        }
    }
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
                assert!(host.is_file(), "{sname}: bind mount {src} is not a file");
                view.files.insert(dst.to_owned(), fs::read(host).unwrap());
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
