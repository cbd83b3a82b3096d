//! The `surge-sim` binary's help: every flag says what it does.

use std::process::Command;

const SIM: &str = env!("CARGO_BIN_EXE_surge-sim");

/// `(flag line, its description)` for every option of `help`, whether clap
/// puts the description on the flag's line or on the lines below it.
fn options(help: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut in_options = false;
    for line in help.lines() {
        if line.trim_end().ends_with(':') && !line.starts_with(' ') {
            in_options = line.starts_with("Options");
            continue;
        }
        if !in_options {
            continue;
        }
        let trimmed = line.trim();
        if trimmed.starts_with('-') {
            // The flag and its value name, then two spaces before any description.
            let (flag, rest) = trimmed.split_once("  ").unwrap_or((trimmed, ""));
            out.push((flag.to_owned(), rest.trim().to_owned()));
        } else if let Some((_, description)) = out.last_mut() {
            description.push(' ');
            description.push_str(trimmed);
        }
    }
    out
}

/// The description without clap's `[default: …]` and `[possible values: …]`.
fn words(description: &str) -> String {
    let mut text = description.to_owned();
    while let Some(start) = text
        .find(" [")
        .or_else(|| text.starts_with('[').then_some(0))
    {
        match text[start..].find(']') {
            Some(end) => text.replace_range(start..start + end + 1, ""),
            None => break,
        }
    }
    text.trim().to_owned()
}

#[test]
fn every_flag_of_every_subcommand_has_a_description() {
    for sub in ["run", "replay", "soak", "calibrate"] {
        let out = Command::new(SIM)
            .args([sub, "--help"])
            .output()
            .expect("surge-sim runs");
        assert!(out.status.success(), "{sub} --help failed");
        let help = String::from_utf8_lossy(&out.stdout);
        let options = options(&help);
        assert!(
            options.len() > 3,
            "no options parsed from {sub} --help:\n{help}"
        );
        let bare: Vec<&str> = options
            .iter()
            .filter(|(_, description)| words(description).is_empty())
            .map(|(flag, _)| flag.as_str())
            .collect();
        assert!(
            bare.is_empty(),
            "{sub} --help leaves these undescribed: {bare:?}\n{help}"
        );
    }
}

#[test]
fn the_parser_of_this_test_finds_a_missing_description() {
    let help = "Options:\n      --clients <CLIENTS>\n          \n      --rate <RATE>\n          New connections per second [default: 1]\n      --seed <SEED>\n          [default: 1]\n";
    let parsed = options(help);
    assert_eq!(parsed.len(), 3);
    assert_eq!(words(&parsed[0].1), "");
    assert_eq!(words(&parsed[1].1), "New connections per second");
    assert_eq!(words(&parsed[2].1), "");
}
