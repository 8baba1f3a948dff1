//! Calendar arithmetic on UTC dates: day numbers, ISO weeks, months, and the warehouse's
//! date and time keys.

use chrono::{DateTime, Datelike, Duration, NaiveDate, Timelike, Utc};

/// Days since 1970-01-01.
pub fn epoch_day(date: NaiveDate) -> i32 {
    date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE
}

/// 1970-01-01 counted from 0001-01-01 (day 1).
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// The date of a day number.
pub fn date_of(day: i32) -> NaiveDate {
    NaiveDate::default() + Duration::days(i64::from(day))
}

/// The instant (midnight UTC) that starts a day number.
pub fn day_start(day: i32) -> DateTime<Utc> {
    date_of(day).and_hms_opt(0, 0, 0).expect("midnight").and_utc()
}

/// The Monday of the ISO week of a day, as a day number.
pub fn week_start(day: i32) -> i32 {
    day - date_of(day).weekday().num_days_from_monday() as i32
}

/// A month as a number: `year * 12 + (month - 1)`.
pub fn month_index(date: NaiveDate) -> i32 {
    date.year() * 12 + date.month0() as i32
}

/// The first day of a month index.
pub fn month_start(index: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(index.div_euclid(12), index.rem_euclid(12) as u32 + 1, 1).expect("valid month")
}

/// `YYYYMMDD` as an integer.
pub fn date_key(date: NaiveDate) -> i32 {
    date.year() * 10_000 + date.month() as i32 * 100 + date.day() as i32
}

/// `HHMM` as an integer (UTC).
pub fn time_key(t: DateTime<Utc>) -> i32 {
    (t.hour() * 100 + t.minute()) as i32
}

/// The batch design's part of the day of an hour: morning 06–11, afternoon 12–17,
/// evening 18–21, night 22–05.
pub fn time_of_day(hour: u32) -> &'static str {
    match hour {
        6..=11 => "morning",
        12..=17 => "afternoon",
        18..=21 => "evening",
        _ => "night",
    }
}

/// `yes` for 09–17.
pub fn business_hour(hour: u32) -> &'static str {
    if (9..=17).contains(&hour) {
        "yes"
    } else {
        "no"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn day_numbers_count_from_1970_both_ways() {
        for day in [-800_000, -719_163, -1, 0, 1, 20_000, 2_000_000] {
            let date = NaiveDate::default() + Duration::days(day);
            assert_eq!(epoch_day(date), day as i32);
            assert_eq!(epoch_day(date), (date - NaiveDate::default()).num_days() as i32);
        }
    }

    #[test]
    fn iso_weeks_cross_the_year_boundary() {
        // 2026-01-01 is a Thursday: its ISO week (2026-W01) starts on Monday 2025-12-29.
        assert_eq!(date_of(week_start(epoch_day(d("2026-01-01")))), d("2025-12-29"));
        assert_eq!(date_of(week_start(epoch_day(d("2025-12-29")))), d("2025-12-29"));
        assert_eq!(date_of(week_start(epoch_day(d("2026-11-29")))), d("2026-11-23"));
        assert_eq!(d("2025-12-29").iso_week().year(), 2026);
    }

    #[test]
    fn months_and_keys() {
        assert_eq!(month_start(month_index(d("2026-11-25"))), d("2026-11-01"));
        assert_eq!(month_start(month_index(d("2026-01-31")) - 1), d("2025-12-01"));
        assert_eq!(date_key(d("2026-03-07")), 20260307);
        assert_eq!(time_key("2026-03-07T09:05:59Z".parse().unwrap()), 905);
        assert_eq!(epoch_day(d("1970-01-02")), 1);
        assert_eq!(
            [time_of_day(5), time_of_day(6), time_of_day(12), time_of_day(18), time_of_day(22)],
            ["night", "morning", "afternoon", "evening", "night"]
        );
        assert_eq!(
            [business_hour(8), business_hour(9), business_hour(17), business_hour(18)],
            ["no", "yes", "yes", "no"]
        );
    }
}

/// Serde for an instant as (seconds, nanoseconds) since the epoch: exact and compact
/// (chrono's own form is an RFC 3339 string, slow to write and parse by the million).
pub mod serde_instant {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        (t.timestamp(), t.timestamp_subsec_nanos()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let (secs, nanos) = <(i64, u32)>::deserialize(d)?;
        DateTime::from_timestamp(secs, nanos).ok_or_else(|| serde::de::Error::custom("instant out of range"))
    }
}
