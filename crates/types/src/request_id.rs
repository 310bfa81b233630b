//! `X-Client-Request-Id` in the official SDKs' format (server and client make them alike): UTC `%Y%m%d%H%M%S` + 20 random
//! alphanumerics, so seedbed and Ark logs read the same.

use rand::Rng;
use rand::distr::Alphanumeric;

/// Milliseconds since the Unix epoch: the one clock every record and event of seedbed reads.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

pub fn new_request_id() -> String {
    let now = now_ms() / 1000;
    let [year, month, day, hour, minute, second] = utc_parts(now);
    let suffix: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(20)
        .map(char::from)
        .collect();
    format!("{year:04}{month:02}{day:02}{hour:02}{minute:02}{second:02}{suffix}")
}

/// Unix seconds as `[year, month, day, hour, minute, second]` in UTC (Hinnant's civil-from-days).
pub fn utc_parts(unix: i64) -> [i64; 6] {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    [year, month, day, secs / 3600, secs % 3600 / 60, secs % 60]
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_look_like_the_sdks() {
        let id = super::new_request_id();
        assert_eq!(id.len(), 34);
        assert!(id[..14].bytes().all(|b| b.is_ascii_digit()), "{id}");
        assert!(id[14..].bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        assert_eq!(super::utc_parts(951_782_400), [2000, 2, 29, 0, 0, 0]);
        assert_eq!(super::utc_parts(1_795_000_000), [2026, 11, 18, 11, 6, 40]);
    }
}
