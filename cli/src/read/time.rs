//! Times and sizes as people read them: durations like uftrace (`  1.234 us`), local wall-clock
//! times, file sizes.

use std::fmt;

/// A duration in nanoseconds, shown in a 10-character column: `    123 ns`, `  1.234 us`,
/// `  5.000 ms`, `  2.500  s` (three decimals, truncated, so the digits are exact).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Duration(pub u64);

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0;
        let text = if ns < 1_000 {
            format!("{ns:>7} ns")
        } else {
            let (scale, unit) = match ns {
                0..=999_999 => (1_000, "us"),
                1_000_000..=999_999_999 => (1_000_000, "ms"),
                _ => (1_000_000_000, " s"),
            };
            let whole = ns / scale;
            let frac = (ns % scale) / (scale / 1_000);
            format!("{:>7} {unit}", format!("{whole}.{frac:03}"))
        };
        f.pad(&text)
    }
}

/// A duration without column padding: `2.500 s`, `10.000 us`.
pub(crate) fn short(ns: u64) -> String {
    Duration(ns).to_string().trim().replace("  s", " s")
}

/// `1 call`, `2 calls`.
pub(crate) fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A byte count: `512 B`, `1.5 KiB`, `20.0 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Nanoseconds since the Unix epoch as local time, `2024-05-01 12:00:00.123 +0200`.
pub(crate) fn wall(unix_ns: u64) -> String {
    let secs = (unix_ns / 1_000_000_000) as libc::time_t;
    let millis = (unix_ns % 1_000_000_000) / 1_000_000;
    // SAFETY: `libc::tm` is plain data (integers and a nullable pointer); all-zero bytes are valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; `localtime_r` writes only `tm`.
    let local = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !local {
        // SAFETY: as above, for `gmtime_r`.
        unsafe { libc::gmtime_r(&secs, &mut tm) };
    }
    let offset_min = if local { tm.tm_gmtoff / 60 } else { 0 };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{millis:03} {}{:02}{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        if offset_min < 0 { '-' } else { '+' },
        offset_min.abs() / 60,
        offset_min.abs() % 60,
    )
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    #[test]
    fn duration__each_unit__then_three_decimals_in_ten_columns() {
        let shown: Vec<String> = [
            0,
            999,
            1_234,
            999_999,
            5_000_000,
            2_500_000_000,
            61_000_000_000,
        ]
        .iter()
        .map(|&ns| Duration(ns).to_string())
        .collect();
        assert_eq!(
            shown,
            [
                "      0 ns",
                "    999 ns",
                "  1.234 us",
                "999.999 us",
                "  5.000 ms",
                "  2.500  s",
                " 61.000  s"
            ]
        );
    }

    #[test]
    fn short__seconds__then_single_space() {
        assert_eq!(short(2_500_000_000), "2.500 s");
        assert_eq!(short(10_000), "10.000 us");
        assert_eq!(plural(1, "call", "calls"), "1 call");
    }

    #[test]
    fn bytes__each_unit__then_binary_prefixes() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(20 << 20), "20.0 MiB");
    }

    #[test]
    fn wall__epoch_time__then_date_time_and_offset() {
        let s = wall(1_700_000_000_123_000_000);
        assert_eq!(s.len(), "2023-11-14 22:13:20.123 +0000".len(), "{s}");
        assert!(s.contains(".123 "), "{s}");
    }
}
