//! End to end through the real broker and MongoDB: produce a generated stream, run
//! `martstream replay --clock event` to the end of the topic, and compare every document of
//! `customer_rfm_analysis` with an independent recompute; every malformed or conflicting
//! message must be in the dead-letter topic, unchanged, with its reason and origin.
//! Needs the local stack (`scripts/stack up`).

mod common;

use std::collections::BTreeMap;

use common::{read_topic, recompute, Scenario};
use loadtest::{GenConfig, Generator, Label};

fn stream(seed: u64, events: usize) -> Vec<loadtest::Message> {
    Generator::new(GenConfig {
        seed,
        events,
        customers: 600,
        products: 80,
        malformed_rate: 0.02,
        duplicate_rate: 0.04,
        conflict_rate: 0.01,
        ..GenConfig::default()
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_builds_the_exact_rfm_view_and_dead_letters_bad_input() {
    let s = Scenario::new("e2e_replay");
    s.create_topics();
    let messages = stream(7, 4000);
    s.produce(&messages).await;
    let sessions = loadtest::sessions(&GenConfig { seed: 7, customers: 600, ..GenConfig::default() }, 800);
    common::produce(&s.sessions, &sessions).await;

    let out = s.martstream(&["replay", "--clock", "event"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let applied = recompute::applied(&messages);
    let all = || messages.iter().chain(&sessions);
    let duplicates = all().filter(|m| m.label == Label::Duplicate).count();
    let valid = all().filter(|m| m.label == Label::Valid).count();
    let consumed = messages.len() + sessions.len();
    let want = format!("replayed {consumed} messages: {valid} applied, {duplicates} duplicates");
    assert!(stdout.contains(&want), "{stdout} (expected {want})");

    let as_of = recompute::event_clock(&applied);
    let expected = recompute::rfm(&applied, as_of, false);
    let db = common::mongo().await.database(&s.database);
    recompute::check_every_view(&db, &messages, &sessions, as_of, true).await.unwrap();
    let bad_sessions = sessions.iter().filter(|m| matches!(m.label, Label::Malformed(_))).count();
    let session_letters = read_topic(&s.sessions_dlq, bad_sessions);
    assert_eq!(session_letters.len(), bad_sessions);
    assert!(session_letters
        .iter()
        .all(|l| l.headers["reason"] == "wrong_type" && l.headers["source_topic"] == s.sessions));
    let validator =
        db.run_command(mongodb::bson::doc! { "listCollections": 1, "filter": { "name": "fact_sales" } }).await.unwrap();
    assert!(format!("{validator}").contains("$jsonSchema"), "fact_sales has the batch design's validator: {validator}");
    // Into an empty database: loaded first, then every secondary index built.
    assert!(stdout.contains("building the secondary indexes (loaded into an empty database first)"), "{stdout}");
    assert_every_index_exists(&db).await;
    let keys_before = s.collection("dim_product").await;

    // The dead-letter topic: every rejected message once, unchanged, with reason and origin.
    let rejected: Vec<&loadtest::Message> =
        messages.iter().filter(|m| matches!(m.label, Label::Malformed(_) | Label::Conflicting)).collect();
    let letters = read_topic(&s.dlq, rejected.len());
    assert_eq!(letters.len(), rejected.len(), "dead letters");
    let mut want: BTreeMap<(String, String), usize> = BTreeMap::new();
    for m in &rejected {
        let reason = match m.label {
            Label::Malformed(r) => r.to_owned(),
            _ => "conflicting_duplicate".to_owned(),
        };
        *want.entry((reason, m.payload.clone())).or_default() += 1;
    }
    let mut got: BTreeMap<(String, String), usize> = BTreeMap::new();
    for l in &letters {
        assert_eq!(l.headers["source_topic"], s.topic);
        assert!(
            l.headers["source_partition"].parse::<i32>().is_ok() && l.headers["source_offset"].parse::<i64>().is_ok()
        );
        assert!(!l.headers["detail"].is_empty());
        *got.entry((l.headers["reason"].clone(), String::from_utf8(l.payload.clone()).unwrap())).or_default() += 1;
    }
    assert_eq!(got, want, "dead letters by reason and payload");
    assert!(
        want.keys().map(|(r, _)| r.as_str()).collect::<std::collections::BTreeSet<_>>().len() >= 8,
        "every reason appears"
    );

    // A backfill from the middle of the topic into the same database keeps every key (new
    // numbering would start over at 1 in a different order)...
    s.martstream(&["replay", "--from-offset", "300"]);
    let key = |docs: &[mongodb::bson::Document]| -> BTreeMap<String, i32> {
        docs.iter().map(|d| (d.get_str("product_id").unwrap().to_owned(), d.get_i32("product_key").unwrap())).collect()
    };
    assert_eq!(key(&s.collection("dim_product").await), key(&keys_before), "surrogate keys survive a replay");
    // ...and replaying everything again converges to the same documents (idempotent),
    // into the indexed database as it is (no deferred build: it is not empty).
    let out = s.martstream(&["replay", "--clock", "event"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("building the secondary indexes"));
    let again = s.collection("customer_rfm_analysis").await;
    recompute::assert_rfm_equal(&again, &expected, as_of);
    recompute::check_star_schema(&db, &applied).await.unwrap();
    assert_eq!(key(&s.collection("dim_product").await), key(&keys_before));
    // Three replays, and still each bad message once in the DLQ.
    assert_each_bad_message_lettered_once(&s, &messages);
}

/// Every index of the batch design (`documents::INDEXES`) is on its collection.
async fn assert_every_index_exists(db: &mongodb::Database) {
    use futures::TryStreamExt;
    for spec in martstream::sink::documents::INDEXES {
        let names: Vec<String> = db
            .collection::<mongodb::bson::Document>(spec.collection)
            .list_indexes()
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .into_iter()
            .filter_map(|i| i.options.and_then(|o| o.name))
            .collect();
        assert!(names.iter().any(|n| n == spec.name), "{}.{} missing: {names:?}", spec.collection, spec.name);
    }
}

/// The transactions DLQ holds exactly one letter per rejected message of `messages`.
fn assert_each_bad_message_lettered_once(s: &Scenario, messages: &[loadtest::Message]) {
    let rejected = messages.iter().filter(|m| matches!(m.label, Label::Malformed(_) | Label::Conflicting)).count();
    let letters = read_topic(&s.dlq, rejected);
    let mut sources = BTreeMap::new();
    for l in &letters {
        *sources.entry((l.headers["source_partition"].clone(), l.headers["source_offset"].clone())).or_insert(0) += 1;
    }
    let twice: Vec<_> = sources.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "source messages lettered more than once: {twice:?}");
    assert_eq!(letters.len(), rejected, "one letter per rejected message");
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_with_bin_scoring_and_a_fixed_as_of() {
    let mut s = Scenario::new("e2e_bins");
    s.extra = vec!["--set".into(), "views.rfm.scoring=bins".into()];
    s.create_topics();
    let messages = stream(11, 1500);
    s.produce(&messages).await;
    let as_of: chrono::DateTime<chrono::Utc> = "2026-12-31T12:00:00Z".parse().unwrap();
    s.martstream(&["replay", "--as-of", "2026-12-31T12:00:00Z"]);
    let applied = recompute::applied(&messages);
    let docs = s.collection("customer_rfm_analysis").await;
    recompute::assert_rfm_equal(&docs, &recompute::rfm(&applied, as_of, true), as_of);
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_from_an_offset_or_a_time_reads_only_the_rest() {
    let s = Scenario::new("e2e_from");
    s.create_topics();
    // Message timestamps strictly increasing, so "at or after a time" is a clean cut.
    let mut messages: Vec<_> = stream(5, 600).into_iter().filter(|m| m.label == Label::Valid).collect();
    let base = messages[0].timestamp;
    for (i, m) in messages.iter_mut().enumerate() {
        m.timestamp = base + chrono::Duration::seconds(i as i64);
    }
    s.produce(&messages).await;
    // Past the end of every partition: nothing to read, nothing written.
    let out = s.martstream(&["replay", "--from-offset", "100000"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed 0 messages"), "{out:?}");
    // From a time after every message timestamp: nothing either.
    let out = s.martstream(&["replay", "--from-timestamp", "2030-01-01T00:00:00Z"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed 0 messages"), "{out:?}");
    // From the middle of the stream's time: only the messages sent at or after it.
    let cut = messages[messages.len() / 2].timestamp;
    let later = messages.iter().filter(|m| m.timestamp >= cut).count();
    let out = s.martstream(&["replay", "--from-timestamp", &cut.to_rfc3339()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("replayed {later} messages")), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_into_a_shadow_database_then_swap_never_shows_a_partial_view() {
    let s = Scenario::new("e2e_swap");
    s.create_topics();
    let messages = stream(13, 6000);
    let (first, _) = messages.split_at(3000);
    s.produce(first).await;
    s.martstream(&["replay", "--clock", "event"]);
    let before_events = recompute::applied(first);
    let before = recompute::rfm(&before_events, recompute::event_clock(&before_events), false);
    recompute::rfm_diff(&s.collection("customer_rfm_analysis").await, &before, None).unwrap();

    s.produce(&messages[3000..]).await;
    let all_events = recompute::applied(&messages);
    let as_of = recompute::event_clock(&all_events);
    let after = recompute::rfm(&all_events, as_of, false);
    let shadow = format!("{}_shadow", s.database);
    // Rate-limited, so the backfill lasts a few seconds while the live view is watched.
    let mut child = s
        .command(&["replay", "--clock", "event", "--into", &shadow, "--swap", "--rate", "2500"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut polls = 0;
    let live_rfm =
        common::mongo().await.database(&s.database).collection::<mongodb::bson::Document>("customer_rfm_analysis");
    while child.try_wait().unwrap().is_none() {
        // A cursor open across the swap is killed ("collection dropped"): the reader gets an
        // error and reads again, never a partial collection.
        use futures::TryStreamExt;
        let read = async { live_rfm.find(mongodb::bson::doc! {}).await?.try_collect::<Vec<_>>().await };
        let Ok(live) = read.await else { continue };
        let old = recompute::rfm_diff(&live, &before, None);
        let new = recompute::rfm_diff(&live, &after, None);
        assert!(old.is_ok() || new.is_ok(), "the live view is neither the old nor the new one: {old:?} / {new:?}");
        polls += 1;
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(2), "--rate 2500 paces 6000 messages");
    assert!(polls >= 5, "the live view was watched during the backfill ({polls} reads)");
    assert!(stdout.contains(&format!("swapped 11 collections from {shadow} into {}", s.database)), "{stdout}");
    // The first half's bad messages were lettered by the first replay; the backfill sent
    // only the second half's.
    let first_half = first.iter().filter(|m| matches!(m.label, Label::Malformed(_) | Label::Conflicting)).count();
    assert!(first_half > 0 && stdout.contains(&format!("({first_half} already in the DLQ")), "{stdout}");
    assert_each_bad_message_lettered_once(&s, &messages);

    let db = common::mongo().await.database(&s.database);
    recompute::check_every_view(&db, &messages, &[], as_of, true).await.unwrap();
    let left = common::mongo().await.database(&shadow).list_collection_names().await.unwrap();
    assert!(left.is_empty(), "the shadow database is emptied by the swap: {left:?}");
}
