//! Config files and environment overrides: problems or settings, never a panic; problems
//! point at lines of the file. The input is the file's text; after a NUL byte come
//! `KEY=VALUE` lines taken as `OCIMIRROR_KEY=VALUE` variables.
//!
//! Keys that name files (password_file, auth keys, htpasswd) are read as ocimirror would:
//! run it where such reads are harmless. `listen` resolves host names: the fuzzer rarely
//! writes one, but a run may stall on DNS if it does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocimirror::config::{Overrides, find_line, load};

fuzz_target!(|s: &str| {
    let (text, env) = s.split_once('\0').unwrap_or((s, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (format!("OCIMIRROR_{k}"), v.to_owned()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mirror.yaml");
    std::fs::write(&path, text).unwrap();
    let lines = text.replace("\r\n", "\n").split(['\r', '\n']).count();
    if let Err(e) = load(Some(&path), env, &Overrides::default()) {
        for p in &e.problems {
            assert!(p.line.is_none_or(|l| (1..=lines).contains(&l)), "{p:?}");
            if p.line.is_some() {
                let path: Vec<&str> = p.key.split('.').collect();
                let _ = find_line(text, &path);
            }
        }
    }
});
