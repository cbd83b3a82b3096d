//! `surge-load bench` end to end: two tiny runs against a real `surge`
//! process, then the report files.
//!
//! The surge binary comes from another package, so it must be built first:
//! `cargo build -p surge-server && cargo test -p surge-load --test bench -- --ignored`
//! (or point `SURGE_BENCH_BIN` at a surge binary).

use std::path::PathBuf;
use std::process::Command;

/// `SURGE_BENCH_BIN`, else the `surge` next to this test's target directory.
fn surge_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SURGE_BENCH_BIN") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/bench-<hash> → target/<profile>/surge
    let exe = std::env::current_exe().expect("test executable");
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("surge"))
        .expect("target directory")
}

#[test]
#[ignore = "needs a built surge: cargo build -p surge-server"]
fn quick_runs_against_a_real_surge_write_the_report() {
    let surge = surge_binary();
    assert!(
        surge.is_file(),
        "no surge at {}: cargo build -p surge-server",
        surge.display()
    );
    let out = std::env::temp_dir().join(format!("surge-bench-test.{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_surge-load"))
        .args([
            "bench",
            "--quick",
            "--only",
            "fanout-2k-ramp,churn,idle-10k-deflate",
            "--allow-dirty",
        ])
        .arg("--surge")
        .arg(&surge)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("surge-load runs");
    assert!(status.success(), "surge-load bench failed");

    let files: Vec<PathBuf> = std::fs::read_dir(&out)
        .expect("results directory")
        .map(|e| e.expect("entry").path())
        .collect();
    let md = files
        .iter()
        .find(|p| p.extension().is_some_and(|x| x == "md"))
        .expect("a markdown report");
    let json = md.with_extension("json");
    let text = std::fs::read_to_string(md).expect("markdown");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("valid JSON");
    std::fs::remove_dir_all(&out).ok();

    let runs = doc["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 3, "{doc:#}");
    for run in runs {
        assert_eq!(run["surge_exit"], "0", "surge exits 0 on SIGTERM: {run:#}");
        assert!(run["loadgen_error"].is_null(), "{run:#}");
    }
    // Runs execute in the suite's order, whatever order --only names them in.
    let by_name = |name: &str| {
        runs.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no run {name}: {doc:#}"))
    };
    let fanout = by_name("fanout-2k-ramp");
    let steps = fanout["result"]["steps"].as_array().expect("steps");
    assert!(!steps.is_empty());
    assert!(
        steps.iter().all(|s| s["delivered"].as_u64() > Some(0)),
        "every step delivered: {steps:#?}"
    );
    // surge's CPU over each step comes from its /proc samples.
    let busy = fanout["step_surge_cpu_percent"].as_array().expect("busy");
    assert_eq!(busy.len(), steps.len());
    assert!(
        busy.iter().all(|b| b.as_f64().is_some_and(|b| b > 0.0)),
        "{busy:?}"
    );
    let churn = by_name("churn");
    assert_eq!(churn["result"]["leaked"], 0, "{churn:#}");
    // surge accepts every client's permessage-deflate offer by default.
    let deflate = by_name("idle-10k-deflate");
    assert_eq!(deflate["result"]["deflate_offered"], true, "{deflate:#}");
    assert_eq!(deflate["result"]["succeeded"], 2000, "{deflate:#}");
    assert_eq!(deflate["result"]["deflate"], 2000, "{deflate:#}");
    assert!(doc["commit"]["commit"].is_string(), "{doc:#}");

    for needle in [
        "## Machine",
        "## Targets",
        "churn 5,000 connect/close cycles",
        "permessage-deflate negotiated",
        "permessage-deflate accepted on 2,000 of 2,000",
        "## fanout-2k-ramp: steps",
        "## Runs",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
}

#[test]
fn a_dirty_tree_is_refused_without_allow_dirty() {
    // A fresh repository with an untracked file: dirty by `git status --porcelain`.
    let dir = std::env::temp_dir().join(format!("surge-bench-dirty.{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&dir)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !git(&["init", "-q"]) {
        eprintln!("git is not available: nothing to check");
        return;
    }
    assert!(git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "empty"
    ]));
    std::fs::write(dir.join("change"), "x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_surge-load"))
        .args(["bench", "--only", "churn", "--surge", "/bin/true"])
        .current_dir(&dir)
        .output()
        .expect("surge-load runs");
    std::fs::remove_dir_all(&dir).ok();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-dirty"), "{err}");
}
