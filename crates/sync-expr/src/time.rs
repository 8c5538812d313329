//! Date-times for the expression language: UTC instants in 100-ns ticks since 0001-01-01
//! (the .NET `DateTime` scale), with AD FILETIME conversion, parsing for `CDate`, .NET-style
//! formatting for `FormatDateTime`, and calendar arithmetic for `DateAdd`.
//!
//! Pure: this module never reads the clock; "now" is given by the caller.

use std::fmt;

/// Ticks (100 ns) per second.
const TICKS_PER_SECOND: i64 = 10_000_000;
const TICKS_PER_DAY: i64 = 86_400 * TICKS_PER_SECOND;
/// Days from 0001-01-01 to 1601-01-01 (the FILETIME epoch).
const FILETIME_EPOCH_DAYS: i64 = 584_388;
/// Days from 0001-01-01 to 1970-01-01.
const UNIX_EPOCH_DAYS: i64 = 719_162;
/// 9999-12-31T23:59:59.9999999, the largest instant.
const MAX_TICKS: i64 = 3_155_378_975_999_999_999;

/// A UTC instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DateTime {
    ticks: i64,
}

impl DateTime {
    /// 0001-01-01T00:00:00Z, the earliest instant.
    pub const MIN: DateTime = DateTime { ticks: 0 };

    /// From ticks since 0001-01-01T00:00:00Z; `None` outside years 1–9999.
    pub fn from_ticks(ticks: i64) -> Option<Self> {
        (0..=MAX_TICKS).contains(&ticks).then_some(DateTime { ticks })
    }

    /// Ticks since 0001-01-01T00:00:00Z.
    pub fn ticks(self) -> i64 {
        self.ticks
    }

    /// From an AD FILETIME (100-ns intervals since 1601-01-01).
    pub fn from_filetime(filetime: i64) -> Option<Self> {
        filetime.checked_add(FILETIME_EPOCH_DAYS * TICKS_PER_DAY).and_then(Self::from_ticks)
    }

    /// As an AD FILETIME.
    pub fn to_filetime(self) -> i64 {
        self.ticks - FILETIME_EPOCH_DAYS * TICKS_PER_DAY
    }

    /// From seconds since the Unix epoch.
    pub fn from_unix_seconds(seconds: i64) -> Option<Self> {
        seconds
            .checked_mul(TICKS_PER_SECOND)
            .and_then(|ticks| ticks.checked_add(UNIX_EPOCH_DAYS * TICKS_PER_DAY))
            .and_then(Self::from_ticks)
    }

    /// From calendar fields (UTC); `None` when a field is out of range.
    pub fn from_parts(year: i64, month: i64, day: i64, hour: i64, minute: i64, second: i64, fraction_ticks: i64) -> Option<Self> {
        if !(1..=12).contains(&month)
            || day < 1
            || day > days_in_month(year, month)
            || !(0..24).contains(&hour)
            || !(0..60).contains(&minute)
            || !(0..60).contains(&second)
            || !(0..TICKS_PER_SECOND).contains(&fraction_ticks)
        {
            return None;
        }
        let days = days_from_civil(year, month, day)?;
        let ticks = days * TICKS_PER_DAY + (hour * 3600 + minute * 60 + second) * TICKS_PER_SECOND + fraction_ticks;
        Self::from_ticks(ticks)
    }

    /// Calendar fields: (year, month, day, hour, minute, second, fraction ticks).
    pub fn parts(self) -> (i64, i64, i64, i64, i64, i64, i64) {
        let days = self.ticks / TICKS_PER_DAY;
        let rest = self.ticks % TICKS_PER_DAY;
        let (year, month, day) = civil_from_days(days);
        let seconds = rest / TICKS_PER_SECOND;
        (year, month, day, seconds / 3600, seconds / 60 % 60, seconds % 60, rest % TICKS_PER_SECOND)
    }

    /// Adds ticks; `None` when the result leaves years 1–9999.
    pub fn add_ticks(self, ticks: i64) -> Option<Self> {
        self.ticks.checked_add(ticks).and_then(Self::from_ticks)
    }

    /// Adds calendar months, clamping the day to the new month's length (like .NET `AddMonths`).
    pub fn add_months(self, months: i64) -> Option<Self> {
        let (year, month, day, hour, minute, second, fraction) = self.parts();
        let total = year.checked_mul(12)?.checked_add(month - 1)?.checked_add(months)?;
        let (new_year, new_month) = (total.div_euclid(12), total.rem_euclid(12) + 1);
        let new_day = day.min(days_in_month(new_year, new_month));
        Self::from_parts(new_year, new_month, new_day, hour, minute, second, fraction)
    }

    /// Day of week, 0 = Sunday.
    pub fn weekday(self) -> i64 {
        // 0001-01-01 was a Monday.
        (self.ticks / TICKS_PER_DAY + 1) % 7
    }
}

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day, hour, minute, second, fraction) = self.parts();
        write!(f, "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}")?;
        if fraction != 0 {
            write!(f, ".{fraction:07}")?;
        }
        f.write_str("Z")
    }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 0001-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm, shifted).
fn days_from_civil(year: i64, month: i64, day: i64) -> Option<i64> {
    if !(1..=9999).contains(&year) {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    // era*146097 + doe counts from 0000-03-01; 0001-01-01 is day 306 of that count.
    Some(era * 146_097 + doe - 306)
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 306;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Parses the forms `CDate` accepts: ISO 8601 (`2013-01-10`, `2013-01-10T16:00:00Z`,
/// `2013-01-10 16:00:00.5+02:00`), with an optional 12-hour clock (`4:00 PM`) and a zone as
/// `Z`, `+hh`, `-h`, `+hh:mm` or `+hhmm` (no zone means UTC); and LDAP generalized time
/// (`20140905081453.0Z`).
pub fn parse(text: &str) -> Option<DateTime> {
    let text = text.trim();
    if text.len() >= 14 && text[..14].bytes().all(|b| b.is_ascii_digit()) {
        return parse_generalized(text);
    }
    let mut rest = text;
    let year = take_number(&mut rest, 4, 4)?;
    expect(&mut rest, '-')?;
    let month = take_number(&mut rest, 1, 2)?;
    expect(&mut rest, '-')?;
    let day = take_number(&mut rest, 1, 2)?;
    let (mut hour, mut minute, mut second, mut fraction) = (0, 0, 0, 0);
    let mut offset_minutes = 0;
    rest = rest.trim_start_matches(['T', ' ']);
    if !rest.is_empty() && rest.starts_with(|c: char| c.is_ascii_digit()) {
        hour = take_number(&mut rest, 1, 2)?;
        expect(&mut rest, ':')?;
        minute = take_number(&mut rest, 2, 2)?;
        if rest.starts_with(':') {
            rest = &rest[1..];
            second = take_number(&mut rest, 2, 2)?;
            if let Some(after_dot) = rest.strip_prefix('.') {
                let digits: String = after_dot.chars().take_while(char::is_ascii_digit).collect();
                if digits.is_empty() || digits.len() > 7 {
                    return None;
                }
                rest = &after_dot[digits.len()..];
                fraction = format!("{digits:0<7}").parse().ok()?;
            }
        }
        let trimmed = rest.trim_start();
        let upper = trimmed.get(..2).map(str::to_ascii_uppercase);
        if let Some(meridiem @ ("AM" | "PM")) = upper.as_deref() {
            if !(1..=12).contains(&hour) {
                return None;
            }
            hour = match (meridiem, hour) {
                ("AM", 12) => 0,
                ("PM", 12) => 12,
                ("PM", h) => h + 12,
                (_, h) => h,
            };
            rest = &trimmed[2..];
        }
    }
    let zone = rest.trim();
    if !zone.is_empty() && zone != "Z" {
        offset_minutes = parse_offset(zone)?;
    }
    let local = DateTime::from_parts(year, month, day, hour, minute, second, fraction)?;
    local.add_ticks(-offset_minutes * 60 * TICKS_PER_SECOND)
}

fn parse_generalized(text: &str) -> Option<DateTime> {
    let field = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, month, day, hour, minute, second) =
        (field(0..4)?, field(4..6)?, field(6..8)?, field(8..10)?, field(10..12)?, field(12..14)?);
    let mut rest = &text[14..];
    let mut fraction = 0;
    if let Some(after) = rest.strip_prefix(['.', ',']) {
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() || digits.len() > 7 {
            return None;
        }
        fraction = format!("{digits:0<7}").parse().ok()?;
        rest = &after[digits.len()..];
    }
    let offset = if rest.is_empty() || rest == "Z" { 0 } else { parse_offset(rest)? };
    DateTime::from_parts(year, month, day, hour, minute, second, fraction)?.add_ticks(-offset * 60 * TICKS_PER_SECOND)
}

fn parse_offset(zone: &str) -> Option<i64> {
    let (sign, digits) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    let (hours, minutes) = match digits.split_once(':') {
        Some((hours, minutes)) => (hours, minutes),
        None if digits.len() == 4 => (&digits[..2], &digits[2..]),
        None => (digits, "0"),
    };
    if hours.is_empty() || hours.len() > 2 || minutes.is_empty() || minutes.len() > 2 {
        return None;
    }
    let (hours, minutes): (i64, i64) = (hours.parse().ok()?, minutes.parse().ok()?);
    if hours > 14 || minutes > 59 {
        return None;
    }
    Some(sign * (hours * 60 + minutes))
}

fn take_number(rest: &mut &str, min: usize, max: usize) -> Option<i64> {
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits < min || digits > max {
        return None;
    }
    let value = rest[..digits].parse().ok()?;
    *rest = &rest[digits..];
    Some(value)
}

fn expect(rest: &mut &str, c: char) -> Option<()> {
    *rest = rest.strip_prefix(c)?;
    Some(())
}

/// Formats with a .NET custom date-time format string: `yyyy yy MM M dd d HH H hh h mm m ss s`,
/// `f`…`fffffff`, `tt`; text in `'…'` or `"…"` and characters after `\` are literal, as is any
/// other character.
pub fn format(instant: DateTime, pattern: &str) -> String {
    let (year, month, day, hour, minute, second, fraction) = instant.parts();
    let mut out = String::new();
    let chars: Vec<char> = pattern.chars().collect();
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        let run = chars[index..].iter().take_while(|&&other| other == c).count();
        match c {
            'y' => {
                if run <= 2 {
                    out.push_str(&format!("{:0width$}", year % 100, width = run));
                } else {
                    out.push_str(&format!("{year:0width$}", width = run));
                }
            }
            'M' => out.push_str(&format!("{month:0width$}", width = run.min(2))),
            'd' => out.push_str(&format!("{day:0width$}", width = run.min(2))),
            'H' => out.push_str(&format!("{hour:0width$}", width = run.min(2))),
            'h' => out.push_str(&format!("{:0width$}", (hour + 11) % 12 + 1, width = run.min(2))),
            'm' => out.push_str(&format!("{minute:0width$}", width = run.min(2))),
            's' => out.push_str(&format!("{second:0width$}", width = run.min(2))),
            'f' | 'F' => {
                let digits = run.min(7);
                let value = fraction / 10_i64.pow(7 - digits as u32);
                out.push_str(&format!("{value:0digits$}"));
            }
            't' => out.push_str(if hour < 12 {
                if run == 1 { "A" } else { "AM" }
            } else if run == 1 {
                "P"
            } else {
                "PM"
            }),
            '\'' | '"' => {
                let close = chars[index + 1..].iter().position(|&other| other == c);
                let end = close.map_or(chars.len(), |offset| index + 1 + offset);
                out.extend(&chars[index + 1..end]);
                index = (end + 1).min(chars.len());
                continue;
            }
            '\\' => {
                if let Some(&next) = chars.get(index + 1) {
                    out.push(next);
                }
                index += 2;
                continue;
            }
            other => {
                out.push(other);
                index += 1;
                continue;
            }
        }
        index += run;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filetime_round_trips_and_matches_the_reference_example() {
        let instant = DateTime::from_filetime(129_699_324_000_000_000).unwrap();
        assert_eq!(instant.to_string(), "2012-01-01T23:00:00Z");
        assert_eq!(instant.to_filetime(), 129_699_324_000_000_000);
        assert_eq!(DateTime::from_unix_seconds(0).unwrap().to_string(), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn civil_conversion_round_trips_every_day_of_some_centuries() {
        for days in (0..3_652_059).step_by(97) {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), Some(days), "{year}-{month}-{day}");
        }
        assert_eq!(civil_from_days(0), (1, 1, 1));
        assert_eq!(civil_from_days(UNIX_EPOCH_DAYS), (1970, 1, 1));
    }

    #[test]
    fn parses_the_documented_forms() {
        let check = |text: &str| parse(text).map(|instant| instant.to_string());
        assert_eq!(check("2013-01-10 4:00 PM -8").as_deref(), Some("2013-01-11T00:00:00Z"));
        assert_eq!(check("2013-01-10").as_deref(), Some("2013-01-10T00:00:00Z"));
        assert_eq!(check("2013-01-10T16:00:00Z").as_deref(), Some("2013-01-10T16:00:00Z"));
        assert_eq!(check("2013-01-10T16:00:00.25+02:00").as_deref(), Some("2013-01-10T14:00:00.2500000Z"));
        assert_eq!(check("2013-01-10 12:30 AM").as_deref(), Some("2013-01-10T00:30:00Z"));
        assert_eq!(check("20140905081453.0Z").as_deref(), Some("2014-09-05T08:14:53Z"));
        for bad in ["", "2013", "2013-13-01", "2013-02-30", "2013-01-10 25:00", "2013-01-10 4:00 XM", "2013-01-10 +99", "yesterday"] {
            assert_eq!(check(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_like_dotnet() {
        let instant = parse("2014-09-05T08:14:53.1234567Z").unwrap();
        assert_eq!(format(instant, "yyyyMMddHHmmss.0Z"), "20140905081453.0Z");
        assert_eq!(format(instant, "yyyy-MM-dd hh:mm tt"), "2014-09-05 08:14 AM");
        assert_eq!(format(instant, "d/M/yy fff"), "5/9/14 123");
        assert_eq!(format(instant, "'year' yyyy \\d"), "year 2014 d");
    }

    #[test]
    fn month_arithmetic_clamps_the_day() {
        let instant = parse("2024-01-31").unwrap();
        assert_eq!(instant.add_months(1).unwrap().to_string(), "2024-02-29T00:00:00Z");
        assert_eq!(instant.add_months(-13).unwrap().to_string(), "2022-12-31T00:00:00Z");
        assert_eq!(parse("2024-11-25").unwrap().weekday(), 1);
    }
}
