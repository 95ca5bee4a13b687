//! Business hours (SPEC V4): which menu answers at a moment, in the
//! attendant's time zone (IANA names; daylight saving as the bundled
//! time zone database has it).

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::model::Attendant;

/// Why a menu answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    Open,
    Closed,
    Holiday,
}

pub fn zone(name: &str) -> Option<TimeZone> {
    if name.is_empty() || name.len() > 64 {
        return None;
    }
    TimeZone::get(name).ok()
}

/// `mon` … `sun` as 0 … 6.
pub fn weekday(day: &str) -> Option<i8> {
    ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .position(|d| *d == day)
        .map(|i| i as i8)
}

/// `HH:MM` (00:00-24:00) as minutes since midnight.
pub fn minute_of_day(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 || h == 24 && m == 0).then_some(h * 60 + m)
}

/// Whether `ms` since the epoch is a moment the time zone database can
/// place (from 1970 to the end of 9999, a day short of it in any zone).
pub fn valid_moment(ms: u64) -> bool {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
        .and_then(|t| t.checked_add(jiff::SignedDuration::from_hours(26)).ok())
        .is_some()
}

/// `YYYY-MM-DD`, a real day.
pub fn valid_date(s: &str) -> bool {
    s.len() == 10 && s.parse::<jiff::civil::Date>().is_ok()
}

/// The menu answering at `ms` (since the epoch), why, and the local time
/// it was (RFC 3339).
pub fn menu_at(a: &Attendant, ms: u64) -> (String, Why, String) {
    let Some(tz) = zone(&a.time_zone) else {
        return (a.closed.clone(), Why::Closed, String::new());
    };
    let Ok(at) = Timestamp::from_millisecond(ms.min(i64::MAX as u64) as i64) else {
        return (a.closed.clone(), Why::Closed, String::new());
    };
    let local = at.to_zoned_datetime(tz);
    let date = local.date().to_string();
    let shown = local.to_string();
    if a.holidays.contains(&date) {
        let menu = a.holiday.clone().unwrap_or_else(|| a.closed.clone());
        return (menu, Why::Holiday, shown);
    }
    let day = local.weekday().to_monday_zero_offset();
    let minute = local.hour() as u16 * 60 + local.minute() as u16;
    let open = a
        .hours
        .iter()
        .filter(|(d, _)| weekday(d) == Some(day))
        .flat_map(|(_, spans)| spans.iter())
        .any(|[from, to]| {
            matches!(
                (minute_of_day(from), minute_of_day(to)),
                (Some(f), Some(t)) if f <= minute && minute < t
            )
        });
    if open {
        (a.open.clone(), Why::Open, shown)
    } else {
        (a.closed.clone(), Why::Closed, shown)
    }
}
