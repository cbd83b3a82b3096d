//! The shipped `.env.example` is exactly what `surge config --env-example`
//! generates from the settings table, so it cannot drift from the binary.

#[test]
fn committed_env_example_matches_the_settings_table() {
    let committed = include_str!("../../.env.example");
    let generated = surge_server::cli::env_example();
    assert!(
        committed == generated,
        "regenerate it: cargo run -p surge-server -- config --env-example > .env.example"
    );
}
