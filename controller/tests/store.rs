//! The store suite: the same properties checked on the embedded redb store and on a real etcd
//! (Debian's etcd-server, one private member per test).

use std::sync::Arc;
use std::time::{Duration, Instant};

use triad_controller::store::{
    EtcdStore, EventKind, Expect, RedbStore, Store, StoreError, Txn, Watch,
};
use triad_tests::{Etcd, TempDir};

/// A store of one backend, with whatever keeps it alive.
struct Backend {
    store: Arc<dyn Store>,
    _etcd: Option<Etcd>,
    _dir: TempDir,
}

async fn redb(name: &str) -> Backend {
    let dir = TempDir::new(&format!("store-redb-{name}"));
    let store = RedbStore::open(&dir.join("state.redb")).expect("opening the redb store");
    Backend {
        store: Arc::new(store),
        _etcd: None,
        _dir: dir,
    }
}

async fn etcd(name: &str) -> Backend {
    let dir = TempDir::new(&format!("store-etcd-{name}"));
    let etcd = Etcd::start(dir.path());
    let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .expect("connecting to etcd");
    Backend {
        store: Arc::new(store),
        _etcd: Some(etcd),
        _dir: dir,
    }
}

async fn put(store: &dyn Store, key: &str, value: &str) -> i64 {
    store
        .txn(Txn::new().put(key, value))
        .await
        .unwrap()
        .expect("an unconditional put applies")
}

async fn next(watch: &mut Watch) -> triad_controller::store::Batch {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a watch event within 10 s")
        .expect("a watch batch")
}

async fn puts_gets_and_ranges(store: Arc<dyn Store>) {
    let r1 = put(&*store, "/t/vms/a", "1").await;
    let r2 = put(&*store, "/t/vms/b", "2").await;
    put(&*store, "/t/vmsx", "not under /t/vms/").await;
    put(&*store, "/t/nodes/n1", "n").await;
    assert!(r2 > r1);
    let r3 = put(&*store, "/t/vms/a", "1'").await;
    let a = store.get("/t/vms/a").await.unwrap().unwrap();
    assert_eq!(a.value, b"1'");
    assert_eq!((a.create_revision, a.mod_revision), (r1, r3));
    assert_eq!(store.get("/t/vms/none").await.unwrap(), None);
    let range = store.range("/t/vms/").await.unwrap();
    let keys: Vec<&str> = range.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/t/vms/a", "/t/vms/b"]);
    assert_eq!(range.revision, r3);
    assert!(store.range("/t/none/").await.unwrap().kvs.is_empty());
}

async fn compare_and_swap(store: Arc<dyn Store>) {
    let made = store
        .txn(Txn::new().expect("/t/k", Expect::Absent).put("/t/k", "v1"))
        .await
        .unwrap()
        .expect("absent, so made");
    let again = store
        .txn(Txn::new().expect("/t/k", Expect::Absent).put("/t/k", "v2"))
        .await
        .unwrap();
    assert_eq!(again, None, "a create of a present key fails");
    let stale = store
        .txn(
            Txn::new()
                .expect("/t/k", Expect::ModRevision(made - 1))
                .put("/t/k", "v3"),
        )
        .await
        .unwrap();
    assert_eq!(stale, None, "a stale revision fails");
    assert_eq!(store.get("/t/k").await.unwrap().unwrap().value, b"v1");
    let swapped = store
        .txn(
            Txn::new()
                .expect("/t/k", Expect::ModRevision(made))
                .put("/t/k", "v4"),
        )
        .await
        .unwrap()
        .expect("the current revision swaps");
    assert!(swapped > made);
    // Many keys: one expectation failing applies nothing.
    let none = store
        .txn(
            Txn::new()
                .expect("/t/k", Expect::ModRevision(swapped))
                .expect("/t/other", Expect::ModRevision(1))
                .put("/t/k", "v5")
                .put("/t/new", "x"),
        )
        .await
        .unwrap();
    assert_eq!(none, None);
    assert_eq!(store.get("/t/k").await.unwrap().unwrap().value, b"v4");
    assert_eq!(store.get("/t/new").await.unwrap(), None);
    // A delete under an expectation, and a delete that changes nothing.
    let before = store.range("/t/").await.unwrap().revision;
    let deleted = store
        .txn(
            Txn::new()
                .expect("/t/k", Expect::ModRevision(swapped))
                .delete("/t/k"),
        )
        .await
        .unwrap()
        .expect("deleted");
    assert_eq!(deleted, before + 1);
    assert_eq!(store.get("/t/k").await.unwrap(), None);
    let nothing = store.txn(Txn::new().delete("/t/k")).await.unwrap();
    assert_eq!(nothing, Some(deleted), "deleting nothing makes no revision");
    // Bad transactions are refused whole.
    let twice = store.txn(Txn::new().put("/t/a", "1").delete("/t/a")).await;
    assert!(matches!(twice, Err(StoreError::Invalid(_))), "{twice:?}");
}

async fn watches_replay_then_follow(store: Arc<dyn Store>) {
    let first = put(&*store, "/t/w/a", "1").await;
    put(&*store, "/t/elsewhere", "x").await;
    let r = store
        .txn(Txn::new().put("/t/w/b", "2").put("/t/w/c", "3"))
        .await
        .unwrap()
        .unwrap();
    let mut past = store.watch("/t/w/", first).await.unwrap();
    let mut live = store.watch("/t/w/", 0).await.unwrap();
    let b1 = next(&mut past).await;
    assert_eq!((b1.revision, b1.events.len()), (first, 1));
    let b2 = next(&mut past).await;
    assert_eq!(b2.revision, r, "the other prefix's change is not seen");
    let keys: Vec<&str> = b2.events.iter().map(|e| e.kv.key.as_str()).collect();
    assert_eq!(keys, ["/t/w/b", "/t/w/c"], "one revision, one batch");
    let d = store
        .txn(Txn::new().delete("/t/w/a"))
        .await
        .unwrap()
        .unwrap();
    for watch in [&mut past, &mut live] {
        let batch = next(watch).await;
        assert_eq!(batch.revision, d);
        assert_eq!(batch.events[0].kind, EventKind::Delete);
        assert_eq!(batch.events[0].kv.key, "/t/w/a");
    }
    // Many changes in a row arrive in order, none missed.
    let mut last = d;
    for i in 0..200 {
        last = put(&*store, &format!("/t/w/n{}", i % 7), &i.to_string()).await;
    }
    let mut seen = d;
    while seen < last {
        let batch = next(&mut live).await;
        assert_eq!(batch.revision, seen + 1, "no revision skipped or repeated");
        seen = batch.revision;
    }
}

async fn leases_expire_and_revoke(store: Arc<dyn Store>) {
    let lease = store.grant(Duration::from_secs(1)).await.unwrap();
    store
        .txn(Txn::new().put_with_lease("/t/leader", "me", lease))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.get("/t/leader").await.unwrap().unwrap().lease,
        Some(lease)
    );
    // Kept alive, it outlives its TTL several times over.
    let kept = Instant::now();
    while kept.elapsed() < Duration::from_secs(4) {
        store.keep_alive(lease).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(store.get("/t/leader").await.unwrap().is_some());
    // Left alone, it expires and takes its key with it (etcd may round a 1 s TTL up).
    let mut watch = store.watch("/t/leader", 0).await.unwrap();
    let batch = next(&mut watch).await;
    assert_eq!(batch.events[0].kind, EventKind::Delete);
    assert_eq!(store.get("/t/leader").await.unwrap(), None);
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    let late = store
        .txn(Txn::new().put_with_lease("/t/late", "x", lease))
        .await;
    assert!(
        matches!(late, Err(StoreError::LeaseNotFound(_))),
        "{late:?}"
    );
    assert_eq!(store.get("/t/late").await.unwrap(), None);
    // Revoking deletes at once.
    let other = store.grant(Duration::from_secs(60)).await.unwrap();
    store
        .txn(
            Txn::new()
                .put_with_lease("/t/x1", "1", other)
                .put_with_lease("/t/x2", "2", other)
                .put("/t/x3", "no lease"),
        )
        .await
        .unwrap()
        .unwrap();
    store.revoke(other).await.unwrap();
    let left: Vec<String> = store
        .range("/t/x")
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(left, ["/t/x3"]);
    // A key put again without the lease leaves it.
    let third = store.grant(Duration::from_secs(60)).await.unwrap();
    put(&*store, "/t/y", "leased").await;
    store
        .txn(Txn::new().put_with_lease("/t/y", "leased", third))
        .await
        .unwrap()
        .unwrap();
    put(&*store, "/t/y", "free").await;
    store.revoke(third).await.unwrap();
    assert!(store.get("/t/y").await.unwrap().is_some());
}

macro_rules! suite {
    ($backend:ident) => {
        mod $backend {
            #[tokio::test]
            async fn puts_gets_and_ranges() {
                let b = super::$backend("pgr").await;
                super::puts_gets_and_ranges(b.store.clone()).await;
            }

            #[tokio::test]
            async fn compare_and_swap() {
                let b = super::$backend("cas").await;
                super::compare_and_swap(b.store.clone()).await;
            }

            #[tokio::test]
            async fn watches_replay_then_follow() {
                let b = super::$backend("watch").await;
                super::watches_replay_then_follow(b.store.clone()).await;
            }

            #[tokio::test]
            async fn leases_expire_and_revoke() {
                let b = super::$backend("lease").await;
                super::leases_expire_and_revoke(b.store.clone()).await;
            }
        }
    };
}

suite!(redb);
suite!(etcd);

/// What the embedded store keeps across a restart: every key, the revision, the history
/// watches start from, and leases (with their whole TTL anew).
#[tokio::test]
async fn redb_keeps_everything_across_reopening() {
    let dir = TempDir::new("store-reopen");
    let path = dir.join("state.redb");
    let (first, lease) = {
        let store = RedbStore::open(&path).unwrap();
        let first = put(&store, "/t/a", "1").await;
        put(&store, "/t/b", "2").await;
        let lease = store.grant(Duration::from_secs(30)).await.unwrap();
        store
            .txn(Txn::new().put_with_lease("/t/leased", "x", lease))
            .await
            .unwrap()
            .unwrap();
        (first, lease)
    };
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.range("/t/").await.unwrap().kvs.len(), 3);
    let mut watch = store.watch("/t/", first).await.unwrap();
    assert_eq!(next(&mut watch).await.revision, first);
    store.keep_alive(lease).await.unwrap();
    let after = put(&store, "/t/c", "3").await;
    assert_eq!(after, first + 3, "the revision goes on where it was");
}

/// A watch from a revision older than the kept history says so, rather than skipping.
#[tokio::test]
async fn redb_watch_from_a_compacted_revision_is_an_error() {
    let dir = TempDir::new("store-compact");
    let store = RedbStore::open_with_history(&dir.join("state.redb"), 5).unwrap();
    for i in 0..20 {
        put(&store, "/t/k", &i.to_string()).await;
    }
    assert!(matches!(
        store.watch("/t/", 2).await,
        Err(StoreError::Compacted(_))
    ));
    let mut recent = store.watch("/t/", 17).await.unwrap();
    assert_eq!(next(&mut recent).await.revision, 17);
}
