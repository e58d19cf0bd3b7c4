//! The `ocimirror` command: `serve` the mirror, `config check` or `config import` a file, `gc`,
//! `keygen`, `hash-password`, `healthcheck`.

// A request must never panic the process on a value it did not expect: say what is wrong
// (`expect` with the invariant, or an error) instead of `unwrap()`.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ocimirror::auth::authn;
use ocimirror::auth::keys::{self, KeyAlgorithm};
use ocimirror::config::{self, Overrides};

#[derive(Parser)]
#[command(
    name = "ocimirror",
    version,
    about = "A pull-through caching mirror for OCI registries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror (with no config: a Docker Hub mirror on :5000, cache in ./ocimirror-data).
    Serve(ServeArgs),
    /// Work with config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Write a fresh token-signing key and a self-signed certificate (what a registry's
    /// `rootcertbundle` trusts).
    Keygen {
        /// Private key output (PKCS#8 PEM, mode 0600).
        #[arg(long, default_value = "token.key")]
        key: PathBuf,
        /// Certificate output (PEM).
        #[arg(long, default_value = "token.crt")]
        certificate: PathBuf,
        /// rsa (default; accepted by every Distribution version) or ec.
        #[arg(long, default_value = "rsa")]
        algorithm: String,
        #[arg(long, default_value = "ocimirror token signer")]
        common_name: String,
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Also write the new key's public JWKS here (a registry's `jwks`; Distribution 3).
        #[arg(long, value_name = "FILE")]
        jwks: Option<PathBuf>,
        /// With --jwks: list the keys of these earlier certificates too, so that registries
        /// given the file before the switch accept tokens of both keys (a rotation).
        #[arg(long, value_name = "CERT", requires = "jwks")]
        previous_certificate: Vec<PathBuf>,
    },
    /// Run one expiry pass now: forget what the config's `expiry` policy (or the flags) says,
    /// clean up abandoned temporary files, and report. Safe beside running replicas.
    Gc(GcArgs),
    /// Print a bcrypt hash of a password read from standard input, for `auth.users`.
    HashPassword {
        #[arg(long, default_value_t = 12)]
        cost: u32,
    },
    /// GET a running mirror's /healthz (or --url) and exit 0 on a 2xx answer, 1 otherwise: a
    /// container HEALTHCHECK that needs no curl in the image.
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:5000/healthz")]
        url: String,
        /// Accept any server certificate: a loopback https:// URL does not match the name the
        /// mirror's certificate is for.
        #[arg(long)]
        insecure: bool,
        /// Give up after this long (connect and answer), e.g. 3s.
        #[arg(long, default_value = "5s")]
        timeout: String,
    },
    #[command(flatten)]
    Ops(OpsCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file (with the environment's overrides) and report every problem.
    Check { file: PathBuf },
    /// Write an ocimirror config equivalent to a Distribution registry's config.yml and/or a
    /// docker_auth auth_config.yml, listing (on stderr and as comments at the top) what could
    /// not be carried over. Distribution's REGISTRY_* variables in the environment (and in
    /// --env-file) are applied to its file, as Distribution does.
    Import {
        /// Distribution's config.yml (e.g. /etc/docker/registry/config.yml).
        #[arg(long, value_name = "CONFIG_YML")]
        distribution: Option<PathBuf>,
        /// docker_auth's auth_config.yml.
        #[arg(long, value_name = "AUTH_CONFIG_YML")]
        docker_auth: Option<PathBuf>,
        /// KEY=VALUE lines (REGISTRY_* variables the registry ran with, e.g. from its Helm
        /// chart's deployment); the process environment's REGISTRY_* variables win over them.
        #[arg(long)]
        env_file: Option<PathBuf>,
        /// Output file (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct GcArgs {
    /// YAML config file (storage, cache and the `expiry` policy).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Report what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Override the policy's max_age, e.g. 30d.
    #[arg(long)]
    max_age: Option<String>,
    /// Override the policy's max_size, e.g. 500GiB.
    #[arg(long)]
    max_size: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// YAML config file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:5000 or :5000.
    #[arg(long)]
    listen: Option<String>,
    /// Directory for local state (spool, and storage unless configured).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Upstream registry URL (default https://registry-1.docker.io).
    #[arg(long)]
    upstream: Option<String>,
    #[arg(long)]
    upstream_username: Option<String>,
    /// File holding the upstream password or token.
    #[arg(long)]
    upstream_password_file: Option<PathBuf>,
    /// How long a tag is trusted before revalidation, e.g. 5m; 0s revalidates every time.
    #[arg(long)]
    tag_ttl: Option<String>,
    /// Never contact the upstream; serve only what is cached.
    #[arg(long)]
    offline: bool,
    /// Never write to storage; stream misses through.
    #[arg(long)]
    read_only: bool,
    /// all (default): the registry and the token endpoint; registry or auth: one of them.
    #[arg(long)]
    role: Option<config::Role>,
}

/// Targets whose debug output carries credentials: reqsign (OpenDAL's request signing) prints
/// the S3 credential provider with its secret key. They are held at `info` whatever the filter
/// says.
const CREDENTIAL_LOGGERS: &[&str] = &[
    "reqsign_core=info",
    "reqsign_aws_core=info",
    "reqsign_aws_v4=info",
    "reqsign_file_read_tokio=info",
];

/// Logs go to stderr from a thread of their own, through a buffer flushed whenever no line is
/// waiting: a request never waits on a write to stderr (one write per access line was a tenth
/// of a warm manifest GET's CPU), and lines still leave at once when the mirror is idle. Access
/// lines are formatted on a thread of theirs too (`http::access`). The returned guard flushes
/// what is left when dropped, so it lives as long as the command.
fn init_logging(level: &str, json: bool) -> tracing_appender::non_blocking::WorkerGuard {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    for d in CREDENTIAL_LOGGERS {
        filter = filter.add_directive(d.parse().expect("a valid directive"));
    }
    // Never lossy: under a flood of requests a request waits for room rather than its line
    // being dropped.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("ocimirror-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let style = match json {
        true => ocimirror::http::access::Style::Json,
        false => ocimirror::http::access::Style::Text { ansi },
    };
    if let Err(e) = ocimirror::http::access::install(writer.clone(), style) {
        eprintln!(
            "cannot start the access log's thread; access lines are formatted per request: {e}"
        );
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    guard
}

/// The multi-threaded runtime every command that does I/O runs on; None (said on stderr) if it
/// cannot start.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            None
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match ocimirror::server::load_config(
            Some(&file),
            std::env::vars(),
            &Overrides::default(),
        ) {
            Ok((_, settings)) => {
                for w in ocimirror::assemble::unmatchable_name_rules(&settings) {
                    eprintln!("warning: {w}");
                }
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Config {
            command:
                ConfigCommand::Import {
                    distribution,
                    docker_auth,
                    env_file,
                    output,
                },
        } => config_import(distribution, docker_auth, env_file, output),
        Command::Keygen {
            key,
            certificate,
            algorithm,
            common_name,
            days,
            jwks,
            previous_certificate,
        } => {
            let alg = match algorithm.parse::<KeyAlgorithm>() {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let mut previous = Vec::new();
            for c in &previous_certificate {
                match keys::certificate_keys(c) {
                    Ok(ks) => previous.extend(ks),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            if let Some(j) = &jwks
                && j.exists()
            {
                eprintln!(
                    "error: {} already exists; refusing to overwrite it",
                    j.display()
                );
                return ExitCode::FAILURE;
            }
            if let Err(e) = keys::keygen(&key, &certificate, alg, &common_name, days) {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            println!("wrote {} and {}", key.display(), certificate.display());
            if let Some(j) = jwks {
                let written = keys::load_signing_key(&key, &certificate).and_then(|k| {
                    let doc = keys::jwks(std::iter::once(k.public_key()).chain(&previous));
                    std::fs::write(&j, format!("{doc:#}\n")).map_err(|source| {
                        keys::KeyError::Write {
                            path: j.clone(),
                            source,
                        }
                    })
                });
                if let Err(e) = written {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
                println!("wrote {}", j.display());
            }
            ExitCode::SUCCESS
        }
        Command::HashPassword { cost } => {
            let mut password = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut password) {
                eprintln!("error: cannot read the password: {e}");
                return ExitCode::FAILURE;
            }
            let password = password.trim_end_matches(['\n', '\r']);
            match authn::try_hash_password(password, cost) {
                Ok(h) => {
                    println!("{h}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Gc(a) => gc(a),
        Command::Healthcheck {
            url,
            insecure,
            timeout,
        } => healthcheck(&url, insecure, &timeout),
        Command::Ops(c) => ops_main(c),
        Command::Serve(a) => {
            let overrides = Overrides {
                listen: a.listen,
                data_dir: a.data_dir,
                upstream: a.upstream,
                upstream_username: a.upstream_username,
                upstream_password_file: a.upstream_password_file,
                tag_ttl: a.tag_ttl,
                offline: a.offline,
                read_only: a.read_only,
                role: a.role,
            };
            let Some(settings) = settings_or_report(a.config.as_deref(), &overrides) else {
                return ExitCode::FAILURE;
            };
            let _log = init_logging(&settings.log_level, settings.log_json);
            let Some(runtime) = runtime() else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(ocimirror::server::serve(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn healthcheck(url: &str, insecure: bool, timeout: &str) -> ExitCode {
    match ocimirror::ops::healthcheck::check(url, insecure, timeout) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn config_import(
    distribution: Option<PathBuf>,
    docker_auth: Option<PathBuf>,
    env_file: Option<PathBuf>,
    output: Option<PathBuf>,
) -> ExitCode {
    let mut imported = match ocimirror::import::import_files(
        distribution.as_deref(),
        docker_auth.as_deref(),
        env_file.as_deref(),
        output.as_deref(),
    ) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    imported.self_check();
    let text = imported.render();
    match &output {
        Some(o) => {
            if let Err(e) = std::fs::write(o, &text) {
                eprintln!("error: cannot write {}: {e}", o.display());
                return ExitCode::FAILURE;
            }
            eprintln!("wrote {}", o.display());
        }
        None => print!("{text}"),
    }
    eprint!("{}", imported.notes_text());
    ExitCode::SUCCESS
}

/// The settings of the file at `path`, the environment and `overrides`; `None` once their
/// problems are printed.
fn settings_or_report(
    path: Option<&std::path::Path>,
    overrides: &Overrides,
) -> Option<config::Settings> {
    match ocimirror::server::load_config(path, std::env::vars(), overrides) {
        Ok((_, s)) => Some(s),
        Err(e) => {
            eprint!("{e}");
            None
        }
    }
}

fn gc(a: GcArgs) -> ExitCode {
    use ocimirror::ops::gc;
    let Some(settings) = settings_or_report(a.config.as_deref(), &Overrides::default()) else {
        return ExitCode::FAILURE;
    };
    let policy = match gc::policy(
        settings.expiry.clone(),
        a.max_age.as_deref(),
        a.max_size.as_deref(),
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if settings.read_only && !a.dry_run {
        eprintln!("error: storage.read_only is set; only --dry-run is possible");
        return ExitCode::FAILURE;
    }
    let _log = init_logging(&settings.log_level, settings.log_json);
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let report = match runtime.block_on(ocimirror::ops::expiry_pass(&settings, policy, a.dry_run)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    ocimirror::ops::print(a.json, &report, &gc::report_text(&report));
    if report.errors > 0 {
        eprintln!(
            "{} deletions failed; the next pass retries them",
            report.errors
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

// ---- operator commands: warm, ls, inspect ------------------------------------------------------

#[derive(Subcommand)]
enum OpsCommand {
    /// Pre-fetch images into the cache (every platform of an index unless --platform), through
    /// a running mirror (--mirror) or straight into the storage of a config (--config).
    Warm(WarmArgs),
    /// List the cached repositories: tags, manifests, bytes, last pull.
    Ls(LsArgs),
    /// Show one cached repository or tag in detail: manifests, platforms, blobs, presence.
    Inspect(InspectArgs),
}

#[derive(clap::Args)]
struct WarmArgs {
    /// Images: name[:tag|@digest] (tag `latest` by default); a name starting with a configured
    /// upstream's name (ghcr.io/owner/app) is fetched from that upstream.
    #[arg(required = true)]
    images: Vec<String>,
    /// Only this platform of an index, os/arch[/variant] (repeatable).
    #[arg(long)]
    platform: Vec<String>,
    /// Warm through this running mirror (http://host:5000) instead of into storage directly.
    #[arg(long, conflicts_with = "config")]
    mirror: Option<String>,
    /// With --mirror over https: do not verify its certificate.
    #[arg(long, requires = "mirror")]
    insecure: bool,
    /// With --mirror over https: trust only the CAs in this PEM file.
    #[arg(long, requires = "mirror")]
    ca_file: Option<PathBuf>,
    /// With --mirror that requires tokens: the account to ask its token service for.
    #[arg(long, requires = "mirror", env = "OCIMIRROR_WARM__USERNAME")]
    username: Option<String>,
    /// With --username: a file holding the password (else OCIMIRROR_WARM__PASSWORD).
    #[arg(long, requires = "username")]
    password_file: Option<PathBuf>,
    /// YAML config whose storage and upstreams to use (without --mirror).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct LsArgs {
    /// YAML config whose storage to read.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct InspectArgs {
    /// REPOSITORY or REPOSITORY:TAG.
    repository: String,
    /// YAML config whose storage to read.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

/// The environment variable holding `warm --username`'s password when no --password-file is
/// given (the `OCIMIRROR_<SECTION>__<KEY>` form the config's secrets take).
const WARM_PASSWORD_ENV: &str = "OCIMIRROR_WARM__PASSWORD";

/// `warm`'s credentials for the mirror's token service: --username with --password-file or
/// the password in the environment.
fn warm_credentials(a: &WarmArgs) -> Result<Option<ocimirror::ops::auth::Credentials>, String> {
    let Some(username) = a.username.clone().filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let password = match &a.password_file {
        Some(p) => std::fs::read_to_string(p)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| format!("--password-file {}: {e}", p.display()))?,
        None => std::env::var(WARM_PASSWORD_ENV).map_err(|_| {
            format!("--username {username:?} needs --password-file or {WARM_PASSWORD_ENV}")
        })?,
    };
    Ok(Some(ocimirror::ops::auth::Credentials {
        username,
        password,
    }))
}

fn ops_main(c: OpsCommand) -> ExitCode {
    use ocimirror::ops;
    let config_path = match &c {
        OpsCommand::Warm(a) => a.config.clone(),
        OpsCommand::Ls(a) => a.config.clone(),
        OpsCommand::Inspect(a) => a.config.clone(),
    };
    let Some(settings) = settings_or_report(config_path.as_deref(), &Overrides::default()) else {
        return ExitCode::FAILURE;
    };
    let _log = init_logging("warn", false);
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match c {
        OpsCommand::Warm(a) => {
            let mut opts = ops::warm::WarmOptions::default();
            for p in &a.platform {
                match ops::Platform::parse(p) {
                    Ok(p) => opts.platforms.push(p),
                    Err(e) => {
                        eprintln!("error: --platform: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            let credentials = match warm_credentials(&a) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let reports = runtime.block_on(async {
                let source: Box<dyn ops::warm::Source> = match &a.mirror {
                    Some(url) => Box::new(ops::warm::MirrorSource::new(
                        url,
                        a.insecure,
                        a.ca_file.as_deref(),
                        credentials,
                    )?),
                    None => {
                        for image in &a.images {
                            if let Some(note) = ops::warm::routing_note(&settings, image) {
                                eprintln!("note: {note}");
                            }
                        }
                        Box::new(ops::warm::LocalSource::new(&settings).await?)
                    }
                };
                Ok::<_, String>(ops::warm::warm(source.as_ref(), &a.images, &opts).await)
            });
            let reports = match reports {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let text: String = reports
                .iter()
                .filter(|r| r.error.is_none())
                .map(|r| r.line() + "\n")
                .collect();
            ops::print(a.json, &reports, &text);
            let failed: Vec<_> = reports.iter().filter(|r| r.error.is_some()).collect();
            for r in &failed {
                eprintln!(
                    "error: {}: {}",
                    r.image,
                    r.error.as_deref().unwrap_or_default()
                );
            }
            if failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        OpsCommand::Ls(a) => {
            let recorded = settings.expiry.is_some();
            let listing = runtime.block_on(async {
                let storage = ops::listing::open_storage(&settings).await?;
                ops::listing::ls(storage.as_ref(), recorded)
                    .await
                    .map_err(|e| e.to_string())
            });
            match listing {
                Ok(l) => {
                    ops::print(a.json, &l, &l.text());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        OpsCommand::Inspect(a) => {
            let recorded = settings.expiry.is_some();
            let detail = runtime.block_on(async {
                let storage = ops::listing::open_storage(&settings).await?;
                let (name, tag) = ops::listing::parse_target(&settings, &a.repository)?;
                let mut d = ops::listing::inspect(storage.as_ref(), &name, tag.as_ref(), recorded)
                    .await
                    .map_err(|e| e.to_string())?;
                ops::listing::add_signatures(&settings, &mut d).await?;
                Ok::<_, String>(d)
            });
            match detail {
                Ok(d) => {
                    ops::print(a.json, &d, &d.text());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
