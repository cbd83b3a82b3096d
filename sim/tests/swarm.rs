//! The bounded swarm every CI run does: `surge-sim soak --swarm` over a
//! fixed range of seeds, each drawing its own scenario, parameters and
//! faults, on every core. A failure prints the seed's report and its
//! replay command.

use std::process::Command;

const SIM: &str = env!("CARGO_BIN_EXE_surge-sim");

/// Seeds per CI run: about a minute on two cores in the test profile
/// (48 seeds took 18 s).
const SEEDS: &str = "160";

#[test]
fn a_bounded_swarm_holds_every_invariant() {
    let out = Command::new(SIM)
        .args(["soak", "--swarm", "--first", "1", "--seeds", SEEDS])
        .output()
        .expect("surge-sim runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swarm failed:\n{stdout}");
    assert!(
        stdout.contains(&format!("swarm: {SEEDS} seeds in ")),
        "{stdout}"
    );
    assert!(stdout.contains("seeds per hour"), "{stdout}");
    assert!(
        stdout.contains("swarm: every seed held every invariant"),
        "{stdout}"
    );
    eprintln!(
        "{}",
        stdout
            .lines()
            .filter(|l| l.starts_with("swarm:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
