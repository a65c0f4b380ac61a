//! Cron expressions: 5 fields (`min hour day-of-month month day-of-week`) or 6 (a leading
//! seconds field), with `*`, values, ranges `a-b`, steps `*/n` and `a-b/n`, lists `a,b`, month
//! and weekday names (`JAN`, `MON`), weekday 0 or 7 for Sunday. As in Vixie cron, when both
//! day-of-month and day-of-week are restricted a day matching either fires.
//!
//! Pure arithmetic over seconds since the epoch plus a fixed UTC offset: no clock, no time-zone
//! database (so no table in the binary and no surprise from the device's `/etc/localtime`).

use std::fmt;
use std::str::FromStr;

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronExpr {
    seconds: u64,
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_any: bool,
    weekdays_any: bool,
}

/// Why an expression is not valid cron.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronError(pub String);

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn value(
    field: &str,
    s: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    name_base: u32,
) -> Result<u32, CronError> {
    let upper = s.to_ascii_uppercase();
    if let Some(i) = names.iter().position(|n| *n == upper) {
        return Ok(u32::try_from(i).unwrap_or(0) + name_base);
    }
    let v: u32 = s
        .parse()
        .map_err(|_| CronError(format!("{field}: {s:?} is not a number")))?;
    if v < lo || v > hi {
        return Err(CronError(format!("{field}: {v} is outside {lo}-{hi}")));
    }
    Ok(v)
}

/// Parses one field into a bit set; returns (bits, was `*`).
fn field(
    name: &str,
    text: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    name_base: u32,
) -> Result<(u64, bool), CronError> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| CronError(format!("{name}: bad step {s:?}")))?;
                if step == 0 {
                    return Err(CronError(format!("{name}: step 0")));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                value(name, a, lo, hi, names, name_base)?,
                value(name, b, lo, hi, names, name_base)?,
            )
        } else {
            let v = value(name, range, lo, hi, names, name_base)?;
            (v, if part.contains('/') { hi } else { v })
        };
        if a > b {
            return Err(CronError(format!("{name}: range {a}-{b} is backwards")));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, text == "*" || text == "?"))
}

impl FromStr for CronExpr {
    type Err = CronError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > 128 {
            return Err(CronError("longer than 128 characters".into()));
        }
        let parts: Vec<&str> = s.split_whitespace().collect();
        let (sec, rest) = match parts.len() {
            5 => ("0", &parts[..]),
            6 => (parts[0], &parts[1..]),
            n => {
                return Err(CronError(format!(
                "{n} fields; expected 5 (min hour dom month dow) or 6 (sec min hour dom month dow)"
            )))
            }
        };
        let dow_text = rest[4].replace('7', "0");
        let (seconds, _) = field("seconds", sec, 0, 59, &[], 0)?;
        let (minutes, _) = field("minutes", rest[0], 0, 59, &[], 0)?;
        let (hours, _) = field("hours", rest[1], 0, 23, &[], 0)?;
        let (days, days_any) = field("day of month", &rest[2].replace('?', "*"), 1, 31, &[], 0)?;
        let (months, _) = field("month", rest[3], 1, 12, &MONTHS, 1)?;
        let (weekdays, weekdays_any) = field(
            "day of week",
            &dow_text.replace('?', "*"),
            0,
            6,
            &WEEKDAYS,
            0,
        )?;
        let expr = CronExpr {
            seconds,
            minutes,
            hours: u32::try_from(hours).unwrap_or(0),
            days: u32::try_from(days).unwrap_or(0),
            months: u16::try_from(months).unwrap_or(0),
            weekdays: u8::try_from(weekdays).unwrap_or(0),
            days_any,
            weekdays_any,
        };
        // 2028-01-01: a leap year ahead, so 29 February can be found.
        if expr.next_after(1_830_297_600_000, 0).is_none() {
            return Err(CronError("never fires".into()));
        }
        Ok(expr)
    }
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl CronExpr {
    fn day_matches(&self, days: i64, d: u32) -> bool {
        let weekday = u32::try_from((days + 4).rem_euclid(7)).unwrap_or(0); // 1970-01-01 was a Thursday
        let dom = self.days & (1 << d) != 0;
        let dow = self.weekdays & (1 << weekday) != 0;
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        }
    }

    /// The first firing strictly after `after_ms` (ms since the epoch, UTC), in a zone
    /// `offset_min` minutes east of UTC. `None` if none within ~5 years.
    pub fn next_after(&self, after_ms: u64, offset_min: i32) -> Option<u64> {
        let offset = i64::from(offset_min) * 60;
        let mut t = i64::try_from(after_ms / 1000).ok()? + 1 + offset; // local seconds
        for _ in 0..200_000 {
            let days = t.div_euclid(86_400);
            let secs = t.rem_euclid(86_400);
            let (y, m, d) = civil_from_days(days);
            if self.months & (1 << m) == 0 {
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                t = days_from_civil(ny, nm, 1) * 86_400;
                continue;
            }
            if !self.day_matches(days, d) {
                t = (days + 1) * 86_400;
                continue;
            }
            let (h, min, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
            if self.hours & (1 << h) == 0 {
                t = days * 86_400 + (h + 1) * 3600;
                continue;
            }
            if self.minutes & (1 << min) == 0 {
                t = days * 86_400 + h * 3600 + (min + 1) * 60;
                continue;
            }
            if self.seconds & (1 << s) == 0 {
                t += 1;
                continue;
            }
            return u64::try_from((t - offset) * 1000).ok();
        }
        None
    }
}

/// The first firing of `expr` strictly after `after_ms`, in the named `zone` when given (None
/// if it is unknown here), else at the fixed offset.
pub fn next_firing(
    expr: &CronExpr,
    after_ms: u64,
    offset_min: i32,
    zone: Option<&str>,
    zones: &crate::zones::Zones,
) -> Option<u64> {
    match zone {
        None => expr.next_after(after_ms, offset_min),
        Some(z) if zones.exists(z) => {
            expr.next_after_in(after_ms, &|ms| zones.offset_min(z, ms).unwrap_or(0))
        }
        Some(_) => None,
    }
}

impl CronExpr {
    /// The first firing strictly after `after_ms` in a zone whose offset changes (daylight
    /// saving time), `offset_at(utc_ms)` minutes east of UTC. Local times are matched: a local
    /// time skipped by a spring-forward transition does not fire, one repeated in autumn fires
    /// once (at its first occurrence).
    pub fn next_after_in(&self, after_ms: u64, offset_at: &dyn Fn(u64) -> i32) -> Option<u64> {
        let shift = |utc: u64, off: i32| -> Option<u64> {
            u64::try_from(i64::try_from(utc).ok()? + i64::from(off) * 60_000).ok()
        };
        let unshift = |local: u64, off: i32| -> Option<u64> {
            u64::try_from(i64::try_from(local).ok()? - i64::from(off) * 60_000).ok()
        };
        // Local wall time of `after`, as if it were UTC.
        let mut local_after = shift(after_ms, offset_at(after_ms))?;
        for _ in 0..1000 {
            let local_next = self.next_after(local_after, 0)?;
            // The offsets that could apply around that local time; the earliest instant whose
            // own offset maps to it is the firing.
            let o1 = offset_at(unshift(local_next, offset_at(local_after))?);
            let o2 = offset_at(unshift(local_next, o1)?);
            let mut firing: Option<u64> = None;
            for o in [o1, o2] {
                let Some(utc) = unshift(local_next, o) else {
                    continue;
                };
                if offset_at(utc) == o && utc > after_ms && firing.is_none_or(|f| utc < f) {
                    firing = Some(utc);
                }
            }
            if firing.is_some() {
                return firing;
            }
            local_after = local_next; // skipped by a transition
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(y: i64, mo: u32, d: u32, h: u64, mi: u64, s: u64) -> u64 {
        u64::try_from(days_from_civil(y, mo, d)).expect("after 1970") * 86_400_000
            + (h * 3600 + mi * 60 + s) * 1000
    }

    fn next(expr: &str, after: u64) -> Option<u64> {
        expr.parse::<CronExpr>().expect(expr).next_after(after, 0)
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-1, 0, 59, 365, 11_016, 20_000, 36_524] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn common_expressions() {
        let t = ms(2026, 11, 25, 10, 17, 30);
        assert_eq!(next("* * * * *", t), Some(ms(2026, 11, 25, 10, 18, 0)));
        assert_eq!(next("*/15 * * * *", t), Some(ms(2026, 11, 25, 10, 30, 0)));
        assert_eq!(next("0 3 * * *", t), Some(ms(2026, 11, 26, 3, 0, 0)));
        assert_eq!(next("*/5 * * * * *", t), Some(ms(2026, 11, 25, 10, 17, 35)));
        assert_eq!(next("0 9 * * MON-FRI", t), Some(ms(2026, 11, 26, 9, 0, 0)));
        assert_eq!(next("0 0 1 JAN *", t), Some(ms(2027, 1, 1, 0, 0, 0)));
        assert_eq!(next("0 0 29 2 *", t), Some(ms(2028, 2, 29, 0, 0, 0)));
        assert_eq!(
            next("0 12 * * 0", t),
            Some(ms(2026, 11, 29, 12, 0, 0)),
            "Sunday"
        );
        assert_eq!(
            next("0 12 * * 7", t),
            Some(ms(2026, 11, 29, 12, 0, 0)),
            "7 is Sunday too"
        );
        // Day of month OR day of week when both are restricted.
        assert_eq!(next("0 0 1 * FRI", t), Some(ms(2026, 11, 27, 0, 0, 0)));
        assert_eq!(
            next("30 8 * * *", ms(2026, 11, 25, 8, 30, 0)),
            Some(ms(2026, 11, 26, 8, 30, 0)),
            "strictly after"
        );
    }

    #[test]
    fn fixed_offsets() {
        let e: CronExpr = "0 9 * * *".parse().expect("parse");
        // 09:00 at UTC+02:00 is 07:00 UTC.
        assert_eq!(
            e.next_after(ms(2026, 11, 25, 6, 0, 0), 120),
            Some(ms(2026, 11, 25, 7, 0, 0))
        );
        assert_eq!(
            e.next_after(ms(2026, 11, 25, 6, 0, 0), -300),
            Some(ms(2026, 11, 25, 14, 0, 0))
        );
    }

    #[test]
    fn bad_expressions_say_why() {
        let err = |s: &str| s.parse::<CronExpr>().expect_err(s).to_string();
        assert!(err("* * * *").contains("4 fields"));
        assert_eq!(err("60 * * * *"), "minutes: 60 is outside 0-59");
        assert_eq!(err("* 5-2 * * *"), "hours: range 5-2 is backwards");
        assert_eq!(err("*/0 * * * *"), "minutes: step 0");
        assert_eq!(err("* * * FOO *"), "month: \"FOO\" is not a number");
        assert_eq!(err("0 0 31 2 *"), "never fires");
    }

    #[test]
    fn named_zones_follow_daylight_saving_time() {
        let zones =
            crate::zones::Zones::from_rules(&[("Europe/Berlin", "CET-1CEST,M3.5.0,M10.5.0/3")]);
        let off = |ms: u64| zones.offset_min("Europe/Berlin", ms).expect("zone");
        let daily = |e: &str| e.parse::<CronExpr>().expect(e);
        // 08:00 Berlin is 07:00 UTC in winter, 06:00 UTC in summer.
        let jan = ms(2026, 1, 10, 0, 0, 0);
        assert_eq!(
            daily("0 8 * * *").next_after_in(jan, &off),
            Some(ms(2026, 1, 10, 7, 0, 0))
        );
        let jul = ms(2026, 7, 10, 0, 0, 0);
        assert_eq!(
            daily("0 8 * * *").next_after_in(jul, &off),
            Some(ms(2026, 7, 10, 6, 0, 0))
        );
        // 2026-03-29: 02:30 local does not exist (02:00 → 03:00): skipped to the next day.
        let before = ms(2026, 3, 28, 12, 0, 0);
        assert_eq!(
            daily("30 2 * * *").next_after_in(before, &off),
            Some(ms(2026, 3, 30, 0, 30, 0))
        );
        // 2026-10-25: 02:30 local happens twice (CEST then CET): it fires once, the first time.
        let before = ms(2026, 10, 24, 12, 0, 0);
        let first = daily("30 2 * * *")
            .next_after_in(before, &off)
            .expect("fires");
        assert_eq!(first, ms(2026, 10, 25, 0, 30, 0));
        let second = daily("30 2 * * *")
            .next_after_in(first, &off)
            .expect("fires");
        assert_eq!(
            second,
            ms(2026, 10, 26, 1, 30, 0),
            "not again an hour later"
        );
    }
}
