//! `--since` values: a span back from now (`90s`, `30m`, `1h`, `7d`, `2w`), an RFC 3339 time
//! (`2026-12-01T08:00:00Z`, `2026-12-01T09:00:00+01:00`), a date (`2026-12-01`, midnight UTC) or
//! Unix seconds. Everything becomes Unix seconds.

/// Parse `text` as of `now` (Unix seconds).
pub fn parse(text: &str, now: i64) -> Result<i64, String> {
    let text = text.trim();
    let usage = || {
        format!(
            "`{text}` is not a time: give a span back from now (90s, 30m, 1h, 7d, 2w), an RFC 3339 \
             time (2026-12-01T08:00:00Z), a date (2026-12-01) or Unix seconds"
        )
    };
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    let span = text.char_indices().last().filter(|(at, unit)| {
        unit.is_ascii_alphabetic() && *at > 0 && text[..*at].bytes().all(|b| b.is_ascii_digit())
    });
    if let Some((at, unit)) = span {
        let count: i64 = text[..at].parse().map_err(|_| usage())?;
        let scale = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(usage()),
        };
        return Ok(now - count.checked_mul(scale).ok_or_else(usage)?);
    }
    rfc3339(text).ok_or_else(usage)
}

/// `YYYY-MM-DD`, or `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` (`t` and a space also separate).
fn rfc3339(text: &str) -> Option<i64> {
    let number = |s: &str| -> Option<i64> {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let (date, time) = match text.find(['T', 't', ' ']) {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    let mut parts = date.split('-');
    let (year, month, day) = (
        number(parts.next()?)?,
        number(parts.next()?)?,
        number(parts.next()?)?,
    );
    if parts.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let midnight = days_from_civil(year, month, day) * 86_400;
    let Some(time) = time else {
        return Some(midnight);
    };
    let (clock, offset) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let at = time.rfind(['+', '-'])?;
        let (hours, minutes) = time[at + 1..].split_once(':')?;
        let sign = if time.as_bytes()[at] == b'-' { -1 } else { 1 };
        (
            &time[..at],
            sign * (number(hours)? * 3600 + number(minutes)? * 60),
        )
    };
    let clock = clock.split('.').next()?;
    let mut fields = clock.split(':');
    let (hour, minute, second) = (
        number(fields.next()?)?,
        number(fields.next()?)?,
        number(fields.next()?)?,
    );
    if fields.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(midnight + hour * 3600 + minute * 60 + second - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse;

    const NOW: i64 = 1_764_763_200; // 2025-12-03T12:00:00Z

    #[test]
    fn spans_count_back_from_now() {
        assert_eq!(parse("90s", NOW), Ok(NOW - 90));
        assert_eq!(parse("30m", NOW), Ok(NOW - 1800));
        assert_eq!(parse("1h", NOW), Ok(NOW - 3600));
        assert_eq!(parse("7d", NOW), Ok(NOW - 7 * 86_400));
        assert_eq!(parse("2w", NOW), Ok(NOW - 14 * 86_400));
    }

    #[test]
    fn times_dates_and_unix_seconds() {
        assert_eq!(parse("2025-12-03T12:00:00Z", NOW), Ok(NOW));
        assert_eq!(parse("2025-12-03T13:00:00+01:00", NOW), Ok(NOW));
        assert_eq!(parse("2025-12-03T11:30:00.250-00:30", NOW), Ok(NOW));
        assert_eq!(parse("2025-12-03", NOW), Ok(NOW - 12 * 3600));
        assert_eq!(parse("1970-01-01T00:00:00Z", NOW), Ok(0));
        assert_eq!(parse("2000-03-01", NOW), Ok(951_868_800));
        assert_eq!(parse("1764763200", NOW), Ok(NOW));
    }

    #[test]
    fn anything_else_is_refused_with_the_forms_it_takes() {
        for bad in [
            "yesterday",
            "1y",
            "2025-13-01",
            "2025-12-03T25:00:00Z",
            "h",
            "2025-12-03T12:00",
        ] {
            let error = parse(bad, NOW).unwrap_err();
            assert!(
                error.contains("7d") && error.contains("RFC 3339"),
                "{bad}: {error}"
            );
        }
    }
}
