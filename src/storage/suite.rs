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
}
