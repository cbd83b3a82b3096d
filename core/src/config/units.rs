//! The duration and byte-size notation of the configuration (`1m30s`,
//! `64KiB`), parsed and printed.
//!
//! Both parsers want whole numbers and explicit units. A bare `10` could be
//! seconds or milliseconds and `8KB` could be 8000 or 8192 bytes; a guess
//! that is off by a factor of 1000 is the kind of mistake that only shows
//! under load, so it is refused with a message saying what to write instead.

use std::fmt::Write as _;
use std::time::Duration;

/// Why a duration such as `10s` or `1m30s` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty; write a number with a unit, e.g. 10s")]
    Empty,
    #[error("\"{0}\" has no unit; write e.g. {0}s or {0}ms")]
    MissingUnit(String),
    #[error("unknown unit \"{0}\"; use d, h, m, s or ms")]
    UnknownUnit(String),
    #[error("expected a number at \"{0}\"")]
    MissingNumber(String),
    #[error("only whole numbers are accepted; write e.g. 1500ms instead of 1.5s")]
    Fraction,
    #[error("units must go from largest to smallest, each at most once, e.g. 1h30m")]
    UnitOrder,
    #[error("too large")]
    Overflow,
}

/// Why a byte size such as `64KiB` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BytesError {
    #[error("empty; write a number of bytes or a size with a unit, e.g. 64KiB")]
    Empty,
    #[error("expected a number at \"{0}\"")]
    MissingNumber(String),
    #[error("only whole numbers are accepted; write e.g. 1536KiB instead of 1.5MiB")]
    Fraction,
    #[error("unknown unit \"{0}\"; use B, KiB, MiB, GiB or TiB")]
    UnknownUnit(String),
    #[error("\"{unit}\" could mean 1000 or 1024; write {binary} for multiples of 1024")]
    DecimalUnit { unit: String, binary: &'static str },
    #[error("too large")]
    Overflow,
}

/// Duration units, largest first, with their length in milliseconds.
/// Compound durations must use them in this order (`1h30m`, not `30m1h`).
const DURATION_UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Binary size units, largest first, as printed by [`format_bytes`].
const BYTE_UNITS: [(&str, u64); 4] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
];

/// Reads a duration: one or more `<whole number><unit>` parts with units
/// `d`, `h`, `m`, `s`, `ms`, largest first: `500ms`, `10s`, `2m`, `1h`,
/// `1m30s`. Surrounding whitespace is ignored; a number without a unit is
/// refused because it is ambiguous.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut rest = text;
    let mut total_ms: u64 = 0;
    let mut previous_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, after) = rest.split_at(digits_end);
        if digits.is_empty() {
            return Err(DurationError::MissingNumber(rest.to_owned()));
        }
        if after.starts_with('.') {
            return Err(DurationError::Fraction);
        }
        let unit_end = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(digits.to_owned()));
        }
        let Some(index) = DURATION_UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(DurationError::UnknownUnit(unit.to_owned()));
        };
        if previous_unit.is_some_and(|previous| index <= previous) {
            return Err(DurationError::UnitOrder);
        }
        previous_unit = Some(index);
        let count: u64 = digits.parse().map_err(|_| DurationError::Overflow)?;
        total_ms = count
            .checked_mul(DURATION_UNITS[index].1)
            .and_then(|part| total_ms.checked_add(part))
            .ok_or(DurationError::Overflow)?;
        rest = next;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Prints a duration in the notation [`parse_duration`] reads, largest units
/// first and zero parts left out: `500ms`, `10s`, `1m30s`, `0s`. Precision is
/// one millisecond (configuration values never have more); a remainder below
/// that is dropped.
pub fn format_duration(duration: Duration) -> String {
    let mut ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (name, unit_ms) in DURATION_UNITS {
        let count = ms / unit_ms;
        if count > 0 {
            // Writing to a String cannot fail.
            let _ = write!(out, "{count}{name}");
            ms %= unit_ms;
        }
    }
    out
}

/// Reads a byte size: a whole number, optionally followed (with or without a
/// space) by `B`, `KiB`, `MiB`, `GiB` or `TiB`. `K`, `M`, `G`, `T` (and `Ki`,
/// `Mi`, …) are accepted as the same powers of 1024; units are
/// case-insensitive. `KB`, `MB`, `GB`, `TB` are refused: half the world reads
/// them as powers of 1000.
pub fn parse_bytes(text: &str) -> Result<u64, BytesError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(BytesError::Empty);
    }
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, after) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(BytesError::MissingNumber(text.to_owned()));
    }
    if after.starts_with('.') {
        return Err(BytesError::Fraction);
    }
    let unit = after.trim_start();
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        decimal @ ("kb" | "mb" | "gb" | "tb") => {
            let binary = match decimal {
                "kb" => "KiB",
                "mb" => "MiB",
                "gb" => "GiB",
                _ => "TiB",
            };
            return Err(BytesError::DecimalUnit {
                unit: unit.to_owned(),
                binary,
            });
        }
        _ => return Err(BytesError::UnknownUnit(unit.to_owned())),
    };
    let count: u64 = digits.parse().map_err(|_| BytesError::Overflow)?;
    count.checked_mul(multiplier).ok_or(BytesError::Overflow)
}

/// Prints a byte size in the notation [`parse_bytes`] reads, with the largest
/// binary unit that divides it exactly: `8KiB`, `50MiB`, `1000B`, `0B`.
pub fn format_bytes(bytes: u64) -> String {
    for (name, size) in BYTE_UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{name}", bytes / size);
        }
    }
    format!("{bytes}B")
}
