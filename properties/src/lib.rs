//! Shared set-up for the property suites in `tests/`.
//!
//! Every suite runs at least 256 cases and keeps the failures proptest finds
//! in `properties/proptest-regressions/<suite>.txt`, which is committed:
//! a case that once broke an invariant is replayed first on every run.

use proptest::test_runner::{Config, FileFailurePersistence};

/// A proptest configuration of `cases` cases whose failures persist to
/// `proptest-regressions/<suite>.txt` (relative to this crate).
pub fn config(suite: &str, cases: u32) -> Config {
    let path = format!(
        "{}/proptest-regressions/{suite}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    // proptest wants a 'static path; one small leak per suite is fine in tests.
    let path: &'static str = Box::leak(path.into_boxed_str());
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(path))),
        ..Config::default()
    }
}

/// Cuts `bytes` at the given fractions of its length: `cuts.len() + 1`
/// pieces in order, some possibly empty. The suites feed the pieces one by
/// one to check that a decoder does not care how bytes arrive.
pub fn split_at_fractions<'a>(bytes: &'a [u8], cuts: &[proptest::sample::Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut pieces = Vec::with_capacity(points.len() + 1);
    let mut start = 0;
    for p in points {
        pieces.push(&bytes[start..p]);
        start = p;
    }
    pieces.push(&bytes[start..]);
    pieces
}

/// Every subject of 1 to `max_tokens` tokens over `tokens`, shortest first.
/// With a token no generated pattern uses among them, and patterns of fewer
/// tokens than `max_tokens`, two overlapping patterns share a subject here
/// and a pattern that does not cover another misses one: suites that check
/// subject matching against this set can be exact.
pub fn all_subjects(tokens: &[&str], max_tokens: usize) -> Vec<surge_core::subjects::Subject> {
    let mut layer: Vec<String> = vec![String::new()];
    let mut out = Vec::new();
    for _ in 0..max_tokens {
        layer = layer
            .iter()
            .flat_map(|prefix| {
                tokens.iter().map(move |t| {
                    if prefix.is_empty() {
                        t.to_string()
                    } else {
                        format!("{prefix}.{t}")
                    }
                })
            })
            .collect();
        out.extend(
            layer
                .iter()
                .map(|s| surge_core::subjects::Subject::parse(s).expect("valid subject")),
        );
    }
    out
}
