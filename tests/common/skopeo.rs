//! skopeo as the client: copies and raw inspects through a registry or the mirror, and the OCI
//! layout / `dir:` copies it writes, checked blob by blob against the images pushed.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::{Image, Index, sha256_digest, sha256_hex};

/// `skopeo copy docker://<src> <dest>`; `src` is `HOST:PORT/name:tag` or `HOST:PORT/name@digest`,
/// `dest` e.g. `oci:/dir:tag` or `dir:/dir`. `--preserve-digests` makes any conversion an error.
pub async fn skopeo_copy(
    src: &str,
    dest: &str,
    all: bool,
    creds: Option<&str>,
) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--preserve-digests",
    ]);
    if all {
        cmd.arg("--all");
    }
    match creds {
        Some(c) => cmd.args(["--src-creds", c]),
        None => cmd.arg("--src-no-creds"),
    };
    cmd.arg(format!("docker://{src}")).arg(dest);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .map_err(|_| "skopeo copy timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "skopeo copy {src} {dest} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `skopeo inspect --raw docker://<image>`: the manifest bytes as served.
pub async fn skopeo_inspect_raw(image: &str, creds: Option<&str>) -> Result<Vec<u8>, String> {
    let mut cmd = tokio::process::Command::new("skopeo");
    cmd.args(["inspect", "--raw", "--tls-verify=false"]);
    match creds {
        Some(c) => cmd.args(["--creds", c]),
        None => cmd.arg("--no-creds"),
    };
    cmd.arg(format!("docker://{image}"));
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .map_err(|_| "skopeo inspect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "skopeo inspect {image} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// What an OCI layout directory holds, with every blob's digest checked against its bytes.
pub struct Layout {
    /// Digests of the top-level manifests (index.json for `oci:`, manifest.json for `dir:`).
    pub top: Vec<String>,
    pub blobs: BTreeMap<String, Vec<u8>>,
}

/// Read an `oci:` layout written by skopeo; panics when a blob's bytes do not match its name.
pub fn read_oci_layout(dir: &Path) -> Layout {
    let index: Value = serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let top = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect();
    let mut blobs = BTreeMap::new();
    for e in fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        blobs.insert(format!("sha256:{name}"), read_blob_file(&e.path(), &name));
    }
    Layout { top, blobs }
}

/// The bytes of a blob file named by the hex of its digest; panics when they do not match it.
fn read_blob_file(path: &Path, hex: &str) -> Vec<u8> {
    let data = fs::read(path).unwrap();
    assert_eq!(
        sha256_hex(&data),
        hex,
        "blob file content does not match its digest"
    );
    data
}

/// Read a `dir:` copy written by skopeo (manifest.json + blobs named by hex).
pub fn read_dir_layout(dir: &Path) -> Layout {
    let manifest = fs::read(dir.join("manifest.json")).unwrap();
    let mut blobs = BTreeMap::new();
    let top_digest = sha256_digest(&manifest);
    blobs.insert(top_digest.clone(), manifest);
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if name.len() == 64 && name.chars().all(|c| c.is_ascii_hexdigit()) {
            blobs.insert(format!("sha256:{name}"), read_blob_file(&e.path(), &name));
        }
    }
    Layout {
        top: vec![top_digest],
        blobs,
    }
}

/// Assert the image's manifest (exact bytes) and all its blobs are in `layout`.
pub fn assert_image_in(layout: &Layout, img: &Image) {
    let m = layout
        .blobs
        .get(&img.digest)
        .unwrap_or_else(|| panic!("manifest {} missing from copy", img.digest));
    assert_eq!(
        m, &img.manifest,
        "manifest bytes differ from the upstream's"
    );
    for d in img.all_blobs() {
        let b = layout
            .blobs
            .get(&d.digest)
            .unwrap_or_else(|| panic!("blob {} missing from copy", d.digest));
        assert_eq!(b.len() as u64, d.size);
        if let Some(expected) = img.blobs.get(&d.digest) {
            assert_eq!(&b[..], &expected[..]);
        }
    }
}

/// Where [`pull_copy`] writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CopyTo {
    /// An `oci:` layout of the one image.
    Oci,
    /// An `oci:` layout of an index and every image it lists (`--all`).
    OciAll,
    /// A `dir:` copy (no conversion of a Docker schema 2 image).
    Dir,
}

/// skopeo-pull `name:tag` from `hostport` into a fresh copy of kind `to`; what it holds, its
/// top manifest checked to be `digest`.
async fn pull_copy(
    hostport: &str,
    (name, tag, digest): (&str, &str, &str),
    to: CopyTo,
    creds: Option<&str>,
) -> Layout {
    let out = TempDir::new().unwrap();
    let dest = match to {
        CopyTo::Oci | CopyTo::OciAll => format!("oci:{}:t", out.path().display()),
        CopyTo::Dir => format!("dir:{}", out.path().display()),
    };
    let src = format!("{hostport}/{name}:{tag}");
    skopeo_copy(&src, &dest, to == CopyTo::OciAll, creds)
        .await
        .unwrap();
    let layout = match to {
        CopyTo::Oci | CopyTo::OciAll => read_oci_layout(out.path()),
        CopyTo::Dir => read_dir_layout(out.path()),
    };
    assert_eq!(layout.top, vec![digest.to_string()]);
    layout
}

/// skopeo-pull `name:tag` (an image) from `hostport` into a fresh `oci:` layout and check it.
pub async fn pull_and_check_oci(hostport: &str, img: &Image, creds: Option<&str>) {
    let image = (img.name.as_str(), img.tag.as_str(), img.digest.as_str());
    let layout = pull_copy(hostport, image, CopyTo::Oci, creds).await;
    assert_image_in(&layout, img);
}

/// skopeo-pull a Docker schema2 image into a `dir:` copy (oci: would force a conversion).
pub async fn pull_and_check_docker(hostport: &str, img: &Image, creds: Option<&str>) {
    let image = (img.name.as_str(), img.tag.as_str(), img.digest.as_str());
    let layout = pull_copy(hostport, image, CopyTo::Dir, creds).await;
    assert_image_in(&layout, img);
}

/// skopeo-pull an index with `--all` into an `oci:` layout and check index + every child.
pub async fn pull_and_check_index(hostport: &str, idx: &Index, creds: Option<&str>) {
    let index = (idx.name.as_str(), idx.tag.as_str(), idx.digest.as_str());
    let layout = pull_copy(hostport, index, CopyTo::OciAll, creds).await;
    assert_eq!(
        layout.blobs.get(&idx.digest),
        Some(&idx.manifest),
        "index bytes differ from the upstream's"
    );
    for child in &idx.children {
        assert_image_in(&layout, child);
    }
}
