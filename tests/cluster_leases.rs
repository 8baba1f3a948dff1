//! Partition leases in a real mongod: one holder per lease, epochs that fence a former
//! holder, expiry by MongoDB's clock; and instances running the assignment policy over
//! them converge on fair shares and take over the partitions of one that stops (as a
//! kill -9 would leave them: nothing released, the leases just expire).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use martstream::cluster::assignment::{moves, shares};
use martstream::cluster::leases::{key, Leases};

const TTL: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread")]
async fn one_holder_per_lease_and_epochs_fence_a_former_holder() {
    let db = common::mongo().await.database(&common::fresh_name("leases"));
    let (a, b) = (Leases::new(&db, "a", TTL), Leases::new(&db, "b", TTL));
    let k = key("tx", 0);

    assert_eq!(a.acquire(&k).await.unwrap(), Some(1));
    assert_eq!(b.acquire(&k).await.unwrap(), None, "held by a");
    assert!(a.holds(&k, 1).await.unwrap());
    assert!(!b.holds(&k, 1).await.unwrap());
    assert_eq!(a.renew().await.unwrap(), BTreeMap::from([(k.clone(), 1)]));

    // a stops renewing (paused, partitioned, killed): its lease expires and b takes it.
    tokio::time::sleep(TTL + Duration::from_millis(300)).await;
    assert!(!a.holds(&k, 1).await.unwrap(), "an expired lease is no fence");
    assert_eq!(b.acquire(&k).await.unwrap(), Some(2));
    assert_eq!(a.renew().await.unwrap(), BTreeMap::new(), "a learns it lost the lease");
    assert!(!a.release(&k, 1).await.unwrap(), "a former holder cannot release it");
    assert!(b.holds(&k, 2).await.unwrap());

    // A clean hand-over: free at once, the next holder's epoch above every earlier one.
    assert!(b.release(&k, 2).await.unwrap());
    assert_eq!(a.acquire(&k).await.unwrap(), Some(3));

    // Two instances racing for leases nobody ever held: each goes to exactly one.
    for p in 1..20 {
        let k = key("tx", p);
        let (x, y) = tokio::join!(a.acquire(&k), b.acquire(&k));
        let (x, y) = (x.unwrap(), y.unwrap());
        assert!(x.is_some() != y.is_some(), "partition {p}: {x:?} {y:?}");
    }
    db.drop().await.unwrap();
}

/// One round of an instance: heartbeat, renew, then the policy's moves on the live table.
async fn round(l: &Leases, partitions: &[i32]) {
    l.heartbeat().await.unwrap();
    l.renew().await.unwrap();
    let members = l.members().await.unwrap();
    let holders: BTreeMap<i32, String> = l
        .holders()
        .await
        .unwrap()
        .into_iter()
        .map(|(k, (owner, _))| (k.rsplit_once('/').unwrap().1.parse().unwrap(), owner))
        .collect();
    let mv = moves(partitions, &holders, &members, l.me());
    for p in mv.release {
        let epoch = l.held().await.unwrap()[&key("tx", p)];
        assert!(l.release(&key("tx", p), epoch).await.unwrap());
    }
    for p in mv.acquire {
        l.acquire(&key("tx", p)).await.unwrap(); // another may have been quicker
    }
}

async fn owners(l: &Leases) -> BTreeMap<String, String> {
    l.holders().await.unwrap().into_iter().map(|(k, (owner, _))| (k, owner)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_converge_on_fair_shares_and_take_over_from_one_that_stops() {
    let db = common::mongo().await.database(&common::fresh_name("leases"));
    let partitions: Vec<i32> = (0..8).collect();
    let all: Vec<Leases> = ["a", "b", "c"].iter().map(|m| Leases::new(&db, *m, TTL)).collect();
    let wanted = |live: &[&Leases]| -> BTreeMap<String, usize> {
        let members: BTreeSet<String> = live.iter().map(|l| l.me().to_owned()).collect();
        shares(partitions.len(), &members).into_iter().map(|(m, s)| (m.to_owned(), s)).collect()
    };
    let counts = |o: &BTreeMap<String, String>| -> BTreeMap<String, usize> {
        o.values().fold(BTreeMap::new(), |mut c, m| {
            *c.entry(m.clone()).or_default() += 1;
            c
        })
    };

    // All three join one after another; a few rounds each and every partition has exactly
    // one holder, in shares of 3, 3 and 2.
    for _ in 0..6 {
        for l in &all {
            round(l, &partitions).await;
        }
    }
    let settled = owners(&all[0]).await;
    assert_eq!(settled.len(), 8, "{settled:?}");
    assert_eq!(counts(&settled), wanted(&[&all[0], &all[1], &all[2]]));

    // c stops without a word; a and b go on. Once its leases and membership expire they
    // share its partitions, and nothing of theirs moves.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let after = loop {
        for l in &all[..2] {
            round(l, &partitions).await;
        }
        let now = owners(&all[0]).await;
        if now.len() == 8 && !now.values().any(|o| o == "c") {
            break now;
        }
        assert!(tokio::time::Instant::now() < deadline, "no take-over: {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(counts(&after), wanted(&[&all[0], &all[1]]));
    for (k, o) in &settled {
        if o != "c" {
            assert_eq!(&after[k], o, "{k} moved although its holder stayed");
        }
    }
    db.drop().await.unwrap();
}
