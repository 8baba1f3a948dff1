//! The cluster's stores in a real mongod: the exchange's chunk chains (a replayed chunk is
//! found, not added twice; readers follow one chain per partition, in order), partition
//! snapshots fenced by the lease epoch, and the surrogate-key allocator under a race.

mod common;

use std::collections::BTreeMap;

use martstream::cluster::exchange::{Chunk, Exchange, Published};
use martstream::cluster::keys::{KeyAllocator, KeyKind};
use martstream::cluster::part_snapshots::{PartSnapshotError, PartSnapshots};
use martstream::domain::partials::Partials;
use martstream::domain::quintiles::{CountDelta, Dimension};

fn chunk(partition: i32, from: i64, to: i64, value: i64) -> Chunk {
    let partials = Partials {
        rfm_counts: vec![CountDelta { dimension: Dimension::Frequency, value, delta: 1 }],
        ..Partials::default()
    };
    Chunk { partition, from, to, watermark_ms: Some(to), partials }
}

#[tokio::test(flavor = "multi_thread")]
async fn chunks_chain_per_partition_and_a_replayed_chunk_is_found_not_added() {
    let db = common::mongo().await.database(&common::fresh_name("exchange"));
    let x = Exchange::new(&db);
    x.prepare().await.unwrap();
    assert_eq!(x.publish(&chunk(0, 0, 10, 1), 1).await.unwrap(), Published::Written);
    assert_eq!(x.publish(&chunk(0, 10, 25, 2), 1).await.unwrap(), Published::Written);
    assert_eq!(x.publish(&chunk(1, 0, 7, 3), 1).await.unwrap(), Published::Written);
    // A new holder replaying partition 0 from its snapshot at 10 ends where the former did.
    assert_eq!(x.published_ends(0, 10).await.unwrap(), vec![25]);
    assert_eq!(x.published_ends(0, 0).await.unwrap(), vec![10, 25]);
    assert_eq!(x.publish(&chunk(0, 10, 25, 2), 2).await.unwrap(), Published::AlreadyThere { to: 25 });
    // One that did not (a former holder published first) learns where the chain goes.
    assert_eq!(x.publish(&chunk(0, 10, 30, 2), 2).await.unwrap(), Published::AlreadyThere { to: 25 });

    // Readers take each partition's chunks in order, each once; a gap stops a chain.
    let parts = [0, 1, 2];
    let got = x.pull(&BTreeMap::new(), &parts).await.unwrap();
    let seen: Vec<(i32, i64, i64)> = got.iter().map(|c| (c.partition, c.from, c.to)).collect();
    assert_eq!(seen, vec![(0, 0, 10), (0, 10, 25), (1, 0, 7)]);
    assert_eq!(got[1].partials.rfm_counts[0].value, 2, "the chunk's partials come back as sent");
    let applied = BTreeMap::from([(0, 25), (1, 7)]);
    assert!(x.pull(&applied, &parts).await.unwrap().is_empty());
    x.publish(&chunk(2, 5, 9, 4), 1).await.unwrap(); // not from 0: unreachable until 0..5 is there
    assert!(x.pull(&applied, &parts).await.unwrap().is_empty());
    x.publish(&chunk(2, 0, 5, 5), 1).await.unwrap();
    let got = x.pull(&applied, &parts).await.unwrap();
    assert_eq!(got.iter().map(|c| (c.from, c.to)).collect::<Vec<_>>(), vec![(0, 5), (5, 9)]);
    db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_snapshot_is_refused_under_an_older_epoch_and_large_ones_come_back_whole() {
    let db = common::mongo().await.database(&common::fresh_name("part_snapshots"));
    let s = PartSnapshots::new(&db);
    assert!(s.load(3).await.unwrap().is_none());
    s.save(3, 1, 100, b"first").await.unwrap();
    assert_eq!(s.load(3).await.unwrap(), Some((100, b"first".to_vec())));
    // 20 MB: three pieces under MongoDB's document limit.
    let big: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
    s.save(3, 2, 200, &big).await.unwrap();
    assert_eq!(s.load(3).await.unwrap(), Some((200, big.clone())));
    // The former holder (epoch 1) saves late: refused, the newer snapshot stays.
    assert!(matches!(s.save(3, 1, 150, b"stale").await, Err(PartSnapshotError::Fenced(3))));
    assert_eq!(s.load(3).await.unwrap().map(|(p, b)| (p, b.len())), Some((200, big.len())));
    let pieces = db.collection::<mongodb::bson::Document>("cluster_snapshot_chunks");
    assert_eq!(pieces.count_documents(mongodb::bson::doc! {}).await.unwrap(), 3, "older pieces removed");
    db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_instances_agree_on_every_key() {
    let db = common::mongo().await.database(&common::fresh_name("keys"));
    let (a, b) = (KeyAllocator::new(&db), KeyAllocator::new(&db));
    let mut keys = BTreeMap::new();
    for i in 0..40 {
        let id = format!("P{i:03}");
        let (x, y) = tokio::join!(a.key(KeyKind::Product, &id), b.key(KeyKind::Product, &id));
        let ((kx, newx), (ky, newy)) = (x.unwrap(), y.unwrap());
        assert_eq!(kx, ky, "{id}");
        assert!(newx != newy, "{id}: exactly one of them allocated it");
        keys.insert(id, kx);
    }
    let mut distinct: Vec<i32> = keys.values().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 40, "unique");
    assert_eq!(a.key(KeyKind::Location, "P000").await.unwrap().0, 1, "each kind counts on its own");
    db.drop().await.unwrap();
}
