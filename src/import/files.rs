//! The command line's side of `config import`: the sources read from their files, the
//! registry's environment taken from a file and the process, and where a generated key goes.

use std::path::{Path, PathBuf};

use super::{ImportInput, Imported, import, parse_env_file};

/// Import from the given files. `output` decides where a signing key the sources do not
/// provide is written: beside the output, else `/etc/ocimirror`.
pub fn import_files(
    distribution: Option<&Path>,
    docker_auth: Option<&Path>,
    env_file: Option<&Path>,
    output: Option<&Path>,
) -> Result<Imported, String> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let mut input = ImportInput::default();
    if let Some(p) = distribution {
        input.distribution = Some((p.to_path_buf(), read(p)?));
    }
    if let Some(p) = docker_auth {
        input.docker_auth = Some((p.to_path_buf(), read(p)?));
    }
    if let Some(p) = env_file {
        input.registry_env = parse_env_file(&read(p)?);
    }
    input
        .registry_env
        .extend(std::env::vars().filter(|(k, _)| k.starts_with("REGISTRY_")));
    input.key_dir = match output.and_then(|o| o.parent()) {
        Some(d) if !d.as_os_str().is_empty() => std::path::absolute(d).unwrap_or(d.to_path_buf()),
        Some(_) => std::env::current_dir().unwrap_or_default(),
        None => PathBuf::from("/etc/ocimirror"),
    };
    import(&input).map_err(|e| e.to_string())
}
