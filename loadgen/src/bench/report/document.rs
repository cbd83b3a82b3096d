//! What a session wrote down: the JSON document, and the name of its files.

use serde::Serialize;

use crate::bench::execute::RunRecord;
use crate::bench::machine::{Commit, Machine};

#[derive(Debug, Clone, Serialize)]
pub struct Binary {
    pub label: String,
    pub path: String,
}

/// Everything a session measured: the JSON file as written.
#[derive(Debug, Clone, Serialize)]
pub struct Document {
    pub date: String,
    pub quick: bool,
    pub only: Vec<String>,
    pub commit: Commit,
    pub suite_seconds: u64,
    pub machine: Machine,
    pub binaries: Vec<Binary>,
    pub runs: Vec<RunRecord>,
}

/// `YYYY-MM-DD` (UTC) from `date`, which every system running surge has.
pub fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "undated".into())
}

/// `<date>[-quick][-partial][-compare]`: a smoke or partial session never
/// overwrites the full one.
pub fn file_stem(doc: &Document) -> String {
    let mut stem = doc.date.clone();
    if doc.quick {
        stem += "-quick";
    }
    if !doc.only.is_empty() {
        stem += "-partial";
    }
    if doc.binaries.len() > 1 {
        stem += "-compare";
    }
    stem
}
