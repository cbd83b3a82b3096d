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
