//! `ocimirror gc`: the policy of one pass (the configured one, overridden from the command
//! line) and its report as an operator reads it.

use crate::expiry::{ExpiryPolicy, Report};

/// The configured expiry policy with `--max-age` / `--max-size` applied.
pub fn policy(
    configured: Option<ExpiryPolicy>,
    max_age: Option<&str>,
    max_size: Option<&str>,
) -> Result<ExpiryPolicy, String> {
    let mut policy = configured.unwrap_or_default();
    if let Some(v) = max_age {
        let d = humantime::parse_duration(v)
            .map_err(|e| format!("--max-age {v:?} is not a duration like 30d: {e}"))?;
        policy.max_age = Some(d);
    }
    if let Some(v) = max_size {
        policy.max_size =
            Some(crate::config::parse_size(v).map_err(|e| format!("--max-size: {e}"))?);
    }
    Ok(policy)
}

/// The report as text: what was scanned, removed (or would be, digest by digest in a dry run),
/// spared and kept.
pub fn report_text(report: &Report) -> String {
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut text = format!(
        "scanned: {} blobs ({} bytes), {} manifests, {} repositories\n",
        report.blobs, report.stored_bytes, report.manifests, report.repositories
    );
    text += &format!(
        "{verb}: {} manifests, {} blobs ({} bytes; {} by age, {} by size), {} links, {} access records, {} temporary files\n",
        report.removed_manifests,
        report.removed_blobs,
        report.removed_bytes,
        report.removed_by_age,
        report.removed_by_size,
        report.removed_links,
        report.removed_records,
        report.removed_temp_files
    );
    if report.spared > 0 {
        text += &format!("spared: {} pulled again during the pass\n", report.spared);
    }
    text += &format!("kept: {} bytes\n", report.kept_bytes);
    if report.dry_run {
        for d in &report.removed {
            text += &format!("  {d}\n");
        }
    }
    text
}
