//! The session's results: `<date>.json` (every record) and `<date>.md`
//! (machine, Targets table with one column per surge binary, step tables,
//! capacity math, the runs).

mod document;
mod fmt;
mod markdown;
mod targets;

use std::path::{Path, PathBuf};

use anyhow::Context;

pub use document::{Binary, Document, file_stem, today};

use super::execute::Outcome;

/// Writes `<base>.json` and `<base>.md`.
pub fn write(doc: &Document, base: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if let Some(dir) = base.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = base.with_extension("json");
    let md = base.with_extension("md");
    std::fs::write(&json, serde_json::to_string_pretty(doc)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    let text = markdown::markdown(doc);
    std::fs::write(&md, &text).with_context(|| format!("writing {}", md.display()))?;
    println!("{text}");
    Ok(vec![md, json])
}

/// The loadgen's own summary of an outcome, for the console.
pub fn summary(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Connect(r) => crate::report::connect_summary(r),
        Outcome::Fanout(r) => crate::report::fanout_summary(r),
        Outcome::Churn(r) => crate::report::churn_summary(r),
    }
}
