//! One behaviour suite, run against every backend, stating the contracts the registry relies on.

use bytes::Bytes;
use futures_util::TryStreamExt;

use super::Storage;

async fn collect(s: &dyn Storage, key: &str, off: u64, len: Option<u64>) -> Vec<u8> {
    let chunks: Vec<Bytes> = s
        .read_range(key, off, len)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    chunks.concat()
}

pub async fn run(s: &dyn Storage) {
    run_within_one_part(s).await;
    large_object(s).await;
}

/// Everything but objects larger than one upload part: for an emulator that lacks the store's
/// multipart API (fake-gcs-server has no XML multipart uploads, which Google Cloud Storage has).
pub async fn run_within_one_part(s: &dyn Storage) {
    // Not found is a distinct, recognisable error; stat says None.
    assert!(s.read("x/missing").await.unwrap_err().is_not_found());
    assert!(
        s.read_range("x/missing", 0, None)
            .await
            .err()
            .unwrap()
            .is_not_found()
    );
    assert_eq!(s.stat("x/missing").await.unwrap(), None);

    // put then read, stat, ranges.
    s.put("a/b/c", Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    assert_eq!(
        s.read("a/b/c").await.unwrap(),
        Bytes::from_static(b"0123456789")
    );
    assert_eq!(s.stat("a/b/c").await.unwrap().unwrap().size, 10);
    assert_eq!(collect(s, "a/b/c", 0, None).await, b"0123456789");
    assert_eq!(collect(s, "a/b/c", 3, Some(4)).await, b"3456");
    assert_eq!(collect(s, "a/b/c", 8, Some(100)).await, b"89");

    // put replaces.
    s.put("a/b/c", Bytes::from_static(b"new")).await.unwrap();
    assert_eq!(s.read("a/b/c").await.unwrap(), Bytes::from_static(b"new"));

    // A streamed write is invisible until commit.
    let mut w = s.writer("a/w").await.unwrap();
    w.write(Bytes::from_static(b"hello ")).await.unwrap();
    assert_eq!(s.stat("a/w").await.unwrap(), None);
    w.write(Bytes::from_static(b"world")).await.unwrap();
    assert_eq!(s.stat("a/w").await.unwrap(), None);
    w.commit().await.unwrap();
    assert_eq!(
        s.read("a/w").await.unwrap(),
        Bytes::from_static(b"hello world")
    );

    // A dropped writer publishes nothing.
    let mut w = s.writer("a/dropped").await.unwrap();
    w.write(Bytes::from_static(b"partial")).await.unwrap();
    drop(w);
    assert_eq!(s.stat("a/dropped").await.unwrap(), None);

    // Listing: immediate children, sorted, missing prefix is empty.
    s.put("a/b/d", Bytes::from_static(b"1")).await.unwrap();
    s.put("a/b/e/f", Bytes::from_static(b"1")).await.unwrap();
    assert_eq!(s.list("a/b").await.unwrap(), vec!["c", "d", "e"]);
    assert_eq!(s.list("a").await.unwrap(), vec!["b", "w"]);
    assert!(s.list("nope").await.unwrap().is_empty());

    // Delete, idempotent; listing after delete.
    s.delete("a/b/d").await.unwrap();
    s.delete("a/b/d").await.unwrap();
    assert_eq!(s.stat("a/b/d").await.unwrap(), None);
    assert_eq!(s.list("a/b").await.unwrap(), vec!["c", "e"]);

    // Keys that could escape the root are refused.
    for bad in ["../x", "a/../../x", "/abs", "a//b", ""] {
        assert!(s.read(bad).await.is_err(), "{bad:?} accepted");
        assert!(s.put(bad, Bytes::new()).await.is_err(), "{bad:?} accepted");
    }

    metadata(s).await;
    empty_objects(s).await;
    ranges(s).await;
    atomic_commit(s).await;
    concurrent_writers(s).await;
}

/// A deterministic, position-dependent pattern, so a misplaced or repeated chunk shows.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8 ^ seed)
        .collect()
}

const MIB: usize = 1024 * 1024;
/// Big enough that a backend with 5 MiB multipart parts uploads several, with a short last part.
const LARGE: usize = 12 * MIB;
const CHUNK: usize = 64 * 1024;

async fn write_chunked(s: &dyn Storage, key: &str, data: &[u8]) -> Box<dyn super::ObjectWriter> {
    let mut w = s.writer(key).await.unwrap();
    for c in data.chunks(CHUNK) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    w
}

/// Stat reports the size and a modification time close to now.
async fn metadata(s: &dyn Storage) {
    s.put("m/obj", Bytes::from_static(b"12345")).await.unwrap();
    let m = s.stat("m/obj").await.unwrap().expect("just written");
    assert_eq!(m.size, 5);
    let t = m.modified.expect("modification time reported");
    let skew = match std::time::SystemTime::now().duration_since(t) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(skew.as_secs() < 300, "modified {t:?} is {skew:?} from now");
}

/// An empty object is an object, whether put or written with no chunks.
async fn empty_objects(s: &dyn Storage) {
    s.put("e/put", Bytes::new()).await.unwrap();
    assert_eq!(s.stat("e/put").await.unwrap().unwrap().size, 0);
    assert!(s.read("e/put").await.unwrap().is_empty());
    assert!(collect(s, "e/put", 0, None).await.is_empty());
    let w = s.writer("e/written").await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(s.stat("e/written").await.unwrap().unwrap().size, 0);
    assert!(s.read("e/written").await.unwrap().is_empty());
    assert_eq!(s.list("e").await.unwrap(), vec!["put", "written"]);
}

/// Ranges: whole, middle, to the end, clipped at the end, and past the end (empty, not an error);
/// a missing key is not found whatever the range.
async fn ranges(s: &dyn Storage) {
    s.put("r/ten", Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    for (off, len, want) in [
        (0, None, &b"0123456789"[..]),
        (0, Some(10), b"0123456789"),
        (0, Some(1), b"0"),
        (4, Some(3), b"456"),
        (9, None, b"9"),
        (7, Some(3), b"789"),
        (7, Some(30), b"789"),
        (10, None, b""),
        (10, Some(5), b""),
        (25, None, b""),
        (25, Some(5), b""),
        (4, Some(0), b""),
    ] {
        assert_eq!(
            collect(s, "r/ten", off, len).await,
            want,
            "range {off} {len:?}"
        );
    }
    for (off, len) in [(0, None), (3, Some(2)), (0, Some(0)), (50, None)] {
        assert!(
            s.read_range("r/missing", off, len)
                .await
                .err()
                .expect("missing key read")
                .is_not_found(),
            "range {off} {len:?} of a missing key"
        );
    }
}

/// A streamed write is invisible, to stat, read, ranges and listing, until commit; an object it
/// replaces stays readable, whole, until then.
async fn atomic_commit(s: &dyn Storage) {
    s.put("c/old", Bytes::from_static(b"old")).await.unwrap();
    let mut fresh = s.writer("c/fresh").await.unwrap();
    let mut over = s.writer("c/old").await.unwrap();
    for _ in 0..3 {
        fresh.write(Bytes::from_static(b"fresh ")).await.unwrap();
        over.write(Bytes::from_static(b"replacement "))
            .await
            .unwrap();
    }
    assert_eq!(s.stat("c/fresh").await.unwrap(), None);
    assert!(s.read("c/fresh").await.unwrap_err().is_not_found());
    assert!(
        s.read_range("c/fresh", 0, None)
            .await
            .err()
            .unwrap()
            .is_not_found()
    );
    assert_eq!(s.list("c").await.unwrap(), vec!["old"]);
    assert_eq!(s.read("c/old").await.unwrap(), Bytes::from_static(b"old"));
    assert_eq!(s.stat("c/old").await.unwrap().unwrap().size, 3);
    fresh.commit().await.unwrap();
    over.commit().await.unwrap();
    assert_eq!(s.read("c/fresh").await.unwrap(), b"fresh fresh fresh "[..]);
    assert_eq!(
        s.read("c/old").await.unwrap(),
        b"replacement replacement replacement "[..]
    );
    assert_eq!(s.list("c").await.unwrap(), vec!["fresh", "old"]);

    // A large write dropped half-way (a multipart upload under way, on S3) publishes nothing,
    // and leaves the object it would have replaced alone.
    let w = write_chunked(s, "c/old", &pattern(LARGE, 7)).await;
    drop(w);
    let w = write_chunked(s, "c/dropped", &pattern(LARGE, 7)).await;
    drop(w);
    assert_eq!(s.stat("c/dropped").await.unwrap(), None);
    assert_eq!(s.list("c").await.unwrap(), vec!["fresh", "old"]);
    assert_eq!(s.stat("c/old").await.unwrap().unwrap().size, 36);
}

/// A large object written in many small chunks reads back exactly, whole and in ranges that
/// cross any part boundary.
async fn large_object(s: &dyn Storage) {
    let data = pattern(LARGE, 1);
    write_chunked(s, "big/blob", &data)
        .await
        .commit()
        .await
        .unwrap();
    assert_eq!(
        s.stat("big/blob").await.unwrap().unwrap().size,
        LARGE as u64
    );
    let whole = collect(s, "big/blob", 0, None).await;
    assert!(whole == data, "12 MiB object read back differs");
    for (off, len) in [
        (5 * MIB - 3, 7),
        (8 * MIB - 100, 200),
        (MIB + 1, 5 * MIB),
        (LARGE - 10, 10),
    ] {
        let got = collect(s, "big/blob", off as u64, Some(len as u64)).await;
        assert!(got == data[off..off + len], "range {off} {len}");
    }
    let tail = collect(s, "big/blob", (LARGE - 5) as u64, None).await;
    assert_eq!(tail, data[LARGE - 5..]);
    s.delete("big/blob").await.unwrap();
    assert_eq!(s.stat("big/blob").await.unwrap(), None);
    assert!(s.list("big").await.unwrap().is_empty());
}

/// Writers to the same key: the last commit wins, and the object is always one writer's whole
/// data, never a mix (including two multipart uploads racing).
async fn concurrent_writers(s: &dyn Storage) {
    let a = Bytes::from(pattern(100_000, 0xa));
    let b = Bytes::from(pattern(150_000, 0xb));
    let mut wa = s.writer("con/key").await.unwrap();
    let mut wb = s.writer("con/key").await.unwrap();
    for (ca, cb) in a.chunks(10_000).zip(b.chunks(15_000)) {
        wa.write(Bytes::copy_from_slice(ca)).await.unwrap();
        wb.write(Bytes::copy_from_slice(cb)).await.unwrap();
    }
    wb.commit().await.unwrap();
    assert_eq!(s.read("con/key").await.unwrap(), b);
    wa.commit().await.unwrap();
    assert_eq!(s.read("con/key").await.unwrap(), a);

    let big_a = pattern(6 * MIB + 11, 0x1);
    let big_b = pattern(7 * MIB + 5, 0x2);
    let write = |data: Vec<u8>| async move {
        let mut w = s.writer("con/big").await.unwrap();
        for c in data.chunks(CHUNK) {
            w.write(Bytes::copy_from_slice(c)).await.unwrap();
            tokio::task::yield_now().await;
        }
        w.commit().await.unwrap();
    };
    futures_util::future::join(write(big_a.clone()), write(big_b.clone())).await;
    let got = s.read("con/big").await.unwrap();
    assert!(
        got == big_a || got == big_b,
        "torn object: {} bytes, neither writer's",
        got.len()
    );
}

/// Presigned reads (`storage.redirect`): a URL a plain client GETs the object with, carrying no
/// `secret`; with `expires` (a store that checks signatures), refused once its expiry passed.
pub async fn presigned_reads(s: &dyn Storage, secret: Option<&str>, expires: bool) {
    let key = "docker/registry/v2/blobs/sha256/pr/presigned/data";
    s.put(key, Bytes::from_static(b"presigned bytes"))
        .await
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = s
        .presign_read(key, std::time::Duration::from_secs(600))
        .await
        .unwrap()
        .expect("this store presigns");
    if let Some(secret) = secret {
        let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        assert!(!url.contains(secret) && !url.contains(&encoded), "{url}");
    }
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    assert_eq!(
        r.bytes().await.unwrap(),
        Bytes::from_static(b"presigned bytes")
    );
    if expires {
        // The signature covers the key: another key's URL is not made from this one.
        let other = url.replace("/presigned/", "/other/");
        assert!(
            http.get(&other)
                .send()
                .await
                .unwrap()
                .status()
                .is_client_error()
        );
        let short = s
            .presign_read(key, std::time::Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(http.get(&short).send().await.unwrap().status(), 200);
        // Signatures have whole seconds: well past the expiry.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let r = http.get(&short).send().await.unwrap();
        assert_eq!(
            r.status(),
            403,
            "{short}: {}",
            r.text().await.unwrap_or_default()
        );
    }
}
