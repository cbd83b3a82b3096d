//! `bench/run`, the wrapper that builds and runs `surge-load bench`: its
//! `--help` is whole and agrees with bench/README.md, which lists every run.

use std::path::PathBuf;
use std::process::Command;

fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench")
}

fn help() -> String {
    let out = Command::new("bash")
        .arg(bench_dir().join("run"))
        .arg("--help")
        .output()
        .expect("bash runs bench/run");
    assert!(out.status.success(), "bench/run --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The run time a text gives for the standard runs: the text of its
/// "about … minutes" after the command.
fn run_time(text: &str) -> Option<String> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("bench/run ") && l.contains("standard runs"))?;
    let start = line.find("about ")?;
    let end = start + line[start..].find("minutes")? + "minutes".len();
    Some(line[start..end].to_owned())
}

#[test]
fn help_is_complete_and_lists_every_option() {
    let help = help();
    let last = help.trim_end().lines().last().unwrap_or("");
    assert!(
        last.ends_with('.'),
        "--help stops mid-sentence: {last:?}\n{help}"
    );
    for option in [
        "--quick",
        "--only",
        "--keep",
        "--allow-dirty",
        "--surge",
        "--compare",
        "--out",
        "--help",
    ] {
        assert!(help.contains(option), "{option} missing from\n{help}");
    }
}

#[test]
fn help_and_the_readme_give_the_same_run_time() {
    let readme = std::fs::read_to_string(bench_dir().join("README.md")).expect("bench/README.md");
    let from_help = run_time(&help());
    assert!(from_help.is_some(), "no run time in --help");
    assert_eq!(
        from_help,
        run_time(&readme),
        "bench/run --help vs bench/README.md"
    );
}

#[test]
fn the_readme_describes_every_run_of_the_table() {
    let readme = std::fs::read_to_string(bench_dir().join("README.md")).expect("bench/README.md");
    for name in surge_load::bench::runs::names() {
        assert!(
            readme.contains(&format!("`{name}`")),
            "bench/README.md does not describe the run `{name}`"
        );
    }
}

/// Whether `line` cites a tracker item by number ("issue 6"), which a
/// reader of the repository cannot follow.
fn cites_an_issue_number(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    lower
        .match_indices("issue ")
        .any(|(at, word)| lower[at + word.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

#[test]
fn the_script_and_its_results_cite_no_issue_numbers() {
    let mut files = vec![bench_dir().join("run"), bench_dir().join("README.md")];
    let results = std::fs::read_dir(bench_dir().join("results")).expect("bench/results");
    files.extend(
        results
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "md")),
    );
    assert!(files.len() > 2, "no results in bench/results");
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        for (i, line) in text.lines().enumerate() {
            if cites_an_issue_number(line) {
                found.push(format!("{}:{}: {line}", file.display(), i + 1));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
    assert!(cites_an_issue_number("## Targets (Issue 6)"));
    assert!(!cites_an_issue_number("an issue with 6 runs"));
}

#[test]
fn the_repository_readme_gives_the_same_run_time_as_the_script() {
    let help = help();
    let minutes = run_time(&help).expect("a run time in --help");
    let last_run = help
        .split_once("last full run: ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(figure, _)| figure.to_owned())
        .expect("the last full run's time in --help");
    let readme = std::fs::read_to_string(bench_dir().join("../README.md")).expect("README.md");
    let section = readme
        .split_once("\n## Benchmarks\n")
        .and_then(|(_, rest)| rest.split("\n## ").next())
        .expect("README.md has a Benchmarks section");
    let flat = section.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(&format!("{minutes} on 2 cores after the release build")),
        "README.md's Benchmarks section does not say `{minutes}`:\n{section}"
    );
    assert!(
        flat.contains(&format!("last full run {last_run}")),
        "README.md's Benchmarks section does not give the last run's {last_run}:\n{section}"
    );
}
