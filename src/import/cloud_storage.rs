//! Distribution's `gcs` and `azure` storage drivers to `storage.gcs` and `storage.azblob`, so a
//! bucket or container a Distribution proxy filled is served as it is.

use super::source::Src;
use super::tree::s;
use super::{NoteKind, Out};

pub(super) fn map_gcs(d: &Src, out: &mut Out) {
    out.set("storage.backend", s("gcs"));
    let p = |k: &str| format!("storage.gcs.{k}");
    out.copy_str(d, &p("bucket"), "storage.gcs.bucket");
    out.copy_str(d, &p("rootdirectory"), "storage.gcs.root");
    out.copy_str(d, &p("keyfile"), "storage.gcs.credential_file");
    out.note_set(d, &p("credentials"), NoteKind::NotCarried, "inline service account credentials: write them to a file and set storage.gcs.credential_file");
    out.note_set(
        d,
        &p("chunksize"),
        NoteKind::Changed,
        "ocimirror uploads in 8 MiB parts",
    );
}

pub(super) fn map_azure(d: &Src, out: &mut Out) {
    out.set("storage.backend", s("azblob"));
    let p = |k: &str| format!("storage.azure.{k}");
    let account = d.str(&p("accountname"));
    if let Some(a) = &account {
        out.set("storage.azblob.account_name", s(a.clone()));
    }
    out.copy_str(d, &p("container"), "storage.azblob.container");
    out.copy_str(d, &p("rootdirectory"), "storage.azblob.root");
    if let Some(url) = d.str(&p("serviceurl")) {
        out.set("storage.azblob.endpoint", s(url));
    } else if let Some(realm) = d.str(&p("realm"))
        && realm != "core.windows.net"
        && let Some(a) = &account
    {
        out.set(
            "storage.azblob.endpoint",
            s(format!("https://{a}.blob.{realm}")),
        );
    } else {
        d.mark(&p("realm"));
    }
    out.note_set(
        d,
        &p("accountkey"),
        NoteKind::NotCarried,
        "the account key: write it to a file and set storage.azblob.account_key_file",
    );
    out.note_set(d, &p("credentials"), NoteKind::NotCarried, "credentials other than the account key: ocimirror uses the environment's, then managed identity");
}

#[cfg(test)]
mod tests {
    use super::super::testing::{dist, noted};
    use super::*;
    use crate::config::Config;
    use crate::storage::config::StorageBackend;

    /// Distribution's config `yaml` imported and read back, its storage backend `backend`.
    fn imported(yaml: &str, backend: StorageBackend) -> (super::super::Imported, Config) {
        let i = dist(yaml);
        let c: Config = serde_saphyr::from_str(&i.render()).unwrap();
        assert_eq!(c.storage.backend, backend);
        (i, c)
    }

    #[test]
    fn gcs_driver() {
        let (i, c) = imported(
            "version: 0.1\nstorage:\n  gcs:\n    bucket: reg\n    rootdirectory: /mirror\n    \
             keyfile: /etc/gcs.json\n    chunksize: 5242880\n",
            StorageBackend::Gcs,
        );
        assert_eq!(c.storage.gcs.bucket, "reg");
        assert_eq!(c.storage.gcs.root, "/mirror");
        assert_eq!(
            c.storage.gcs.credential_file.as_deref(),
            Some(std::path::Path::new("/etc/gcs.json"))
        );
        assert!(
            noted(&i, NoteKind::Changed, "distribution: storage.gcs.chunksize"),
            "{:?}",
            i.notes
        );
    }

    #[test]
    fn azure_driver() {
        let (i, c) = imported(
            "version: 0.1\nstorage:\n  azure:\n    accountname: acct\n    accountkey: c2VjcmV0\n    \
             container: reg\n    rootdirectory: /mirror\n    realm: core.chinacloudapi.cn\n",
            StorageBackend::Azblob,
        );
        assert_eq!(c.storage.azblob.container, "reg");
        assert_eq!(c.storage.azblob.root, "/mirror");
        assert_eq!(c.storage.azblob.account_name.as_deref(), Some("acct"));
        assert_eq!(
            c.storage.azblob.endpoint.as_deref(),
            Some("https://acct.blob.core.chinacloudapi.cn")
        );
        assert!(
            noted(
                &i,
                NoteKind::NotCarried,
                "distribution: storage.azure.accountkey"
            ),
            "{:?}",
            i.notes
        );
        assert!(!i.render().contains("c2VjcmV0"), "the key is not copied");
    }
}
