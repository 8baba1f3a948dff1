//! When reconciliations run inside `martstream run`: daily at `reconcile.at` in
//! `reconcile.time_zone`; after a failed run, again `retry_after` later (never past the next
//! scheduled run).

use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Reconciler, RunRequest, Trigger};

/// The first instant after `now` whose local time in `zone` is `at`. A local time skipped by
/// a DST change runs an hour later; one that occurs twice runs at its first occurrence.
pub fn next_run(now: DateTime<Utc>, at: NaiveTime, zone: Tz) -> DateTime<Utc> {
    let today = now.with_timezone(&zone).date_naive();
    for offset in 0..3 {
        let day = today + Duration::days(offset);
        let local = day.and_time(at);
        let candidate = zone
            .from_local_datetime(&local)
            .earliest()
            .or_else(|| zone.from_local_datetime(&(local + Duration::hours(1))).earliest());
        if let Some(t) = candidate.map(|t| t.with_timezone(&Utc)) {
            if t > now {
                return t;
            }
        }
    }
    now + Duration::days(1)
}

/// Runs until `shutdown`.
pub async fn run(reconciler: Arc<Reconciler>, shutdown: CancellationToken) {
    let config = reconciler.config().clone();
    let (Ok(at), Ok(zone)) = (config.time_of_day(), config.zone()) else {
        return; // validated with the configuration
    };
    let retry = Duration::milliseconds(config.retry_after_ms as i64);
    let mut due = next_run(Utc::now(), at, zone);
    loop {
        info!(next = %due.to_rfc3339(), "next reconciliation");
        let wait = (due - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let req = RunRequest { cutoff: None, repair: false, trigger: Trigger::Schedule };
        let failed = match reconciler.run(req).await {
            Ok(report) => report.outcome == "failed",
            Err(_) => true, // a manual run is going on: try again later
        };
        let next = next_run(Utc::now(), at, zone);
        due = if failed { (Utc::now() + retry).min(next) } else { next };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn next_run_in_a_zone() {
        let at = NaiveTime::from_hms_opt(2, 0, 0).unwrap();
        assert_eq!(next_run(utc("2026-11-30T01:00:00Z"), at, Tz::UTC), utc("2026-11-30T02:00:00Z"));
        assert_eq!(next_run(utc("2026-11-30T02:00:00Z"), at, Tz::UTC), utc("2026-12-01T02:00:00Z"));
        // Berlin is UTC+1 in winter: 02:00 local = 01:00 UTC.
        assert_eq!(next_run(utc("2026-11-30T00:30:00Z"), at, Tz::Europe__Berlin), utc("2026-11-30T01:00:00Z"));
        // 2026-03-29 02:00 does not exist in Berlin (clocks jump 02:00 → 03:00): runs at 03:00 CEST.
        assert_eq!(next_run(utc("2026-03-28T12:00:00Z"), at, Tz::Europe__Berlin), utc("2026-03-29T01:00:00Z"));
    }
}
