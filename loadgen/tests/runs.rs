//! The loadgen's runs against in-test servers: every attempt ends in the
//! right kind, the JSON result carries the counts, fan-out detects loss and
//! reordering, churn sees no leak, and `--workers` splits over processes.
//! Only counts are asserted, never times.

mod common;

use std::time::Duration;

use common::{Hub, Perturb};
use surge_load::connect::{self, ConnectConfig};
use surge_load::{churn, fanout, report};

fn ws_url(addr: std::net::SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

/// The JSON line a run prints, parsed back.
fn result_json<T: serde::Serialize>(r: &T) -> serde_json::Value {
    let line = report::result_line(r).unwrap();
    let json = line.strip_prefix(report::RESULT_PREFIX).unwrap();
    serde_json::from_str(json).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_200_all_succeed() {
    let hub = Hub::new(Perturb::None);
    let addr = common::ws_server(hub.clone()).await;
    let cfg = ConnectConfig {
        subscribe: vec!["odin.token.BTC.trade".into()],
        hold: Duration::from_millis(200),
        ..ConnectConfig::new(ws_url(addr), 200)
    };
    let r = connect::run(&cfg).await.unwrap();
    assert_eq!(r.counts.attempted, 200);
    assert_eq!(r.counts.succeeded, 200, "{:?}", r.counts.failures);
    assert_eq!(r.counts.failed, 0);
    assert_eq!(r.open_at_hold, 200);
    assert_eq!(r.counts.dropped, 0);
    assert_eq!(r.counts.handshake.count, 200);
    assert!(r.loadgen_cpu_percent.is_some());
    let json = result_json(&r);
    assert_eq!(json["attempted"], 200);
    assert_eq!(json["succeeded"], 200);
    assert_eq!(json["failed"], 0);
    assert_eq!(json["failures"], serde_json::json!({}));
    let timeline_ok: u64 = r.timeline.iter().map(|row| row.ok).sum();
    assert_eq!(timeline_ok, 200);
    assert_eq!(r.timeline.last().unwrap().open, 0, "all closed at the end");
    assert!(report::connect_summary(&r).contains("succeeded 200"));
    // Closing is asynchronous on the server side; give it a bounded moment.
    for _ in 0..50 {
        if hub.current.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(hub.current.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deflate_offer_is_counted_as_accepted_only_when_the_101_accepts_it() {
    // The test server's 101 carries no Sec-WebSocket-Extensions: every
    // upgrade succeeds and none counts as negotiated.
    let hub = Hub::new(Perturb::None);
    let addr = common::ws_server(hub).await;
    let cfg = ConnectConfig {
        deflate: true,
        ..ConnectConfig::new(ws_url(addr), 50)
    };
    let r = connect::run(&cfg).await.unwrap();
    assert_eq!(r.counts.succeeded, 50, "{:?}", r.counts.failures);
    assert!(r.deflate_offered);
    assert_eq!(r.counts.deflate, 0);
    let json = result_json(&r);
    assert_eq!(json["deflate_offered"], true);
    assert_eq!(json["deflate"], 0);
    assert!(
        report::connect_summary(&r).contains("accepted on 0 of 50 succeeded"),
        "{}",
        report::connect_summary(&r)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_503_is_http_503_with_retry_after() {
    let addr = common::reject_503_server().await;
    let r = connect::run(&ConnectConfig::new(ws_url(addr), 200))
        .await
        .unwrap();
    assert_eq!(r.counts.succeeded, 0);
    assert_eq!(r.counts.failures.get("http_503"), Some(&200));
    assert_eq!(r.counts.failures.len(), 1, "{:?}", r.counts.failures);
    assert_eq!(r.counts.with_retry_after, 200);
    // Every rejection's time to answer is measured.
    assert_eq!(r.counts.rejection_latency.count, 200);
    assert!(r.counts.rejection_latency.max_ms >= r.counts.rejection_latency.p99_ms);
    assert!(r.counts.rejection_latency.p50_ms <= r.counts.rejection_latency.p99_ms);
    assert_eq!(r.counts.handshake.count, 0);
    let json = result_json(&r);
    assert_eq!(json["failures"]["http_503"], 200);
    assert_eq!(json["with_retry_after"], 200);
    assert_eq!(json["rejection_latency"]["count"], 200);
    for key in ["p50_ms", "p99_ms", "max_ms"] {
        assert!(json["rejection_latency"][key].is_number(), "{key}");
    }
    assert!(report::connect_summary(&r).contains("rejection latency ms"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_no_rejection_latency() {
    // Only HTTP answers are timed as rejections; a refused SYN is not one.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let r = connect::run(&ConnectConfig::new(format!("ws://127.0.0.1:{port}/ws"), 20))
        .await
        .unwrap();
    assert_eq!(r.counts.failures.get("refused"), Some(&20));
    assert_eq!(r.counts.rejection_latency.count, 0);
    assert_eq!(result_json(&r)["rejection_latency"]["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_listener_gives_timeouts() {
    // Bound and listening, never accepted: the kernel completes TCP, no one answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = ConnectConfig {
        handshake_timeout: Duration::from_millis(300),
        ..ConnectConfig::new(ws_url(addr), 200)
    };
    let r = connect::run(&cfg).await.unwrap();
    assert_eq!(
        r.counts.failures.get("timeout"),
        Some(&200),
        "{:?}",
        r.counts.failures
    );
    assert_eq!(r.counts.succeeded, 0);
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_gives_refused() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let r = connect::run(&ConnectConfig::new(
        format!("ws://127.0.0.1:{port}/ws"),
        200,
    ))
    .await
    .unwrap();
    assert_eq!(
        r.counts.failures.get("refused"),
        Some(&200),
        "{:?}",
        r.counts.failures
    );
}

#[tokio::test]
async fn non_loopback_targets_are_refused_before_any_socket() {
    let err = connect::run(&ConnectConfig::new("ws://192.0.2.1:80/ws", 1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not loopback"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_detects_a_drop_and_a_swap() {
    let hub = Hub::new(Perturb::DropThirdSwapFifthSixth);
    let ws = common::ws_server(hub.clone()).await;
    let admin = common::admin_server(hub.clone()).await;
    let subscribers = 20;
    let cfg = fanout::FanoutConfig {
        rates: vec![50.0],
        duration: Duration::from_millis(400),
        drain: Duration::from_secs(1),
        ..fanout::FanoutConfig::new(ws_url(ws), format!("http://{admin}"), subscribers)
    };
    let r = fanout::run(&cfg).await.unwrap();
    assert_eq!(r.subscribed, subscribers);
    assert_eq!(r.published, 20);
    assert_eq!(r.expected_deliveries, 20 * subscribers);
    // Message 3 never arrives; 6 arrives before 5.
    assert_eq!(r.delivered, 19 * subscribers);
    assert_eq!(r.lost, subscribers);
    assert_eq!(r.reordered, subscribers);
    assert_eq!(r.duplicates, 0);
    // The server numbered 3 and 5 before dropping/holding them.
    assert_eq!(r.seq_missing, subscribers);
    assert_eq!(r.seq_out_of_order, subscribers);
    assert_eq!(r.dropped_subscribers, 0);
    assert_eq!(r.steps[0].latency.count, 19 * subscribers);
    let json = result_json(&r);
    assert_eq!(json["lost"], subscribers);
    assert_eq!(json["reordered"], subscribers);
    assert!(report::fanout_summary(&r).contains("lost"));
    assert!(report::fanout_chart(&r).unwrap().starts_with("<svg"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_clean_run_loses_nothing() {
    let hub = Hub::new(Perturb::None);
    let ws = common::ws_server(hub.clone()).await;
    let admin = common::admin_server(hub.clone()).await;
    let cfg = fanout::FanoutConfig {
        subjects: vec!["odin.token.BTC.trade".into(), "odin.token.ETH.trade".into()],
        rates: vec![40.0, 80.0],
        duration: Duration::from_millis(250),
        drain: Duration::from_secs(2),
        ..fanout::FanoutConfig::new(ws_url(ws), format!("http://{admin}"), 10)
    };
    let r = fanout::run(&cfg).await.unwrap();
    assert_eq!(r.steps.len(), 2);
    assert_eq!(r.published, 10 + 20);
    assert_eq!(
        (
            r.lost,
            r.reordered,
            r.duplicates,
            r.seq_missing,
            r.seq_out_of_order
        ),
        (0, 0, 0, 0, 0)
    );
    assert_eq!(r.delivered, 300);
    assert!(r.best_lossless_deliveries_per_s.is_some());
    // A gateway that answers at once: publishes go out on time, give or
    // take the scheduler (a few ms here; the bound leaves room for a busy
    // machine and is still far below the seconds of a publisher-bound step).
    let json = result_json(&r);
    for (st, js) in r.steps.iter().zip(json["steps"].as_array().unwrap()) {
        for field in [
            "publish_behind_p99_ms",
            "publish_behind_max_ms",
            "publish_answer_p99_ms",
            "publish_answer_max_ms",
        ] {
            assert!(js[field].is_f64(), "{field} in {js}");
        }
        assert!(st.publish_answer_max_ms > 0.0, "{st:?}");
        assert!(st.publish_answer_p99_ms <= st.publish_answer_max_ms);
        assert!(st.publish_behind_p99_ms <= st.publish_behind_max_ms);
        assert!(st.publish_behind_p99_ms < 100.0, "{st:?}");
    }
    assert!(report::fanout_summary(&r).contains("behind schedule p99"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaks_nothing() {
    let hub = Hub::new(Perturb::None);
    let ws = common::ws_server(hub.clone()).await;
    let admin = common::admin_server(hub.clone()).await;
    let cfg = churn::ChurnConfig {
        url: ws_url(ws),
        admin: format!("http://{admin}"),
        cycles: 100,
        rate: 0.0,
        handshake_timeout: Duration::from_secs(5),
        sources: 2,
        settle: Duration::from_secs(3),
        threads: 2,
    };
    let r = churn::run(&cfg).await.unwrap();
    assert_eq!(
        r.connect.counts.succeeded, 100,
        "{:?}",
        r.connect.counts.failures
    );
    assert_eq!(r.connections_before, 0);
    assert_eq!(r.leaked, 0);
    assert!(r.settled_in_ms.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_spreads_over_worker_processes() {
    let hub = Hub::new(Perturb::None);
    let ws = common::ws_server(hub.clone()).await;
    let dir = std::env::temp_dir().join(format!("surge-load-test-{}", std::process::id()));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_surge-load"))
        .args([
            "connect",
            "--url",
            &ws_url(ws),
            "-n",
            "300",
            "--workers",
            "2",
        ])
        .args([
            "--hold",
            "200ms",
            "--handshake-timeout",
            "5s",
            "--sources",
            "3",
            // Through clap: a comma-separated list, subscribed after welcome.
            "--subscribe",
            "a.b,c.>",
        ])
        .arg("--report")
        .arg(&dir)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the binary finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap();
    let json: serde_json::Value =
        serde_json::from_str(last.strip_prefix(report::RESULT_PREFIX).unwrap()).unwrap();
    assert_eq!(json["workers"], 2);
    assert_eq!(json["attempted"], 300);
    assert_eq!(json["succeeded"], 300);
    assert_eq!(json["open_at_hold"], 300);
    assert!(
        json["loadgen_cpu_percent"].is_number(),
        "workers report their CPU"
    );
    assert!(stdout.contains("handshake latency ms: p50"));
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(written["succeeded"], 300);
    assert!(
        std::fs::read_to_string(dir.join("chart.svg"))
            .unwrap()
            .starts_with("<svg")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A publish answered after 50 ms caps one connection near 20/s; the
/// target of 100/s needs several requests in flight.
const SLOW_PUBLISH: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_publishers_keep_the_rate_on_a_slow_gateway() {
    let hub = Hub::new(Perturb::None);
    let ws = common::ws_server(hub.clone()).await;
    let admin = common::slow_admin_server(hub.clone(), SLOW_PUBLISH).await;
    let cfg = fanout::FanoutConfig {
        rates: vec![100.0, 100.0],
        duration: Duration::from_secs(1),
        drain: Duration::from_secs(2),
        publishers: 16,
        ..fanout::FanoutConfig::new(ws_url(ws), format!("http://{admin}"), 5)
    };
    let r = fanout::run(&cfg).await.unwrap();
    assert_eq!(r.steps.len(), 2, "{:?}", r.stopped_because);
    assert_eq!(r.stopped_because, None);
    for st in &r.steps {
        assert_eq!(st.published, 100, "{:?}", st.publish_errors);
        assert!(
            st.achieved_publish_rate >= 90.0,
            "achieved {}",
            st.achieved_publish_rate
        );
        assert!(!st.publisher_bound);
        // Every answer took the server's 50 ms, yet with 16 connections
        // publishes did not wait for answers (a few ms late here; the bound
        // leaves room for a busy machine).
        assert!(
            st.publish_answer_p99_ms >= 50.0 && st.publish_answer_max_ms >= 50.0,
            "{st:?}"
        );
        assert!(st.publish_behind_p99_ms < 100.0, "{st:?}");
    }
    assert_eq!((r.lost, r.duplicates), (0, 0));
    assert_eq!(r.delivered, 2 * 100 * 5);
    let json = result_json(&r);
    assert_eq!(json["steps"][0]["publisher_bound"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_one_publisher_on_a_slow_gateway_is_publisher_bound() {
    let hub = Hub::new(Perturb::None);
    let ws = common::ws_server(hub.clone()).await;
    let admin = common::slow_admin_server(hub.clone(), SLOW_PUBLISH).await;
    let cfg = fanout::FanoutConfig {
        rates: vec![100.0, 200.0],
        duration: Duration::from_secs(1),
        drain: Duration::from_secs(1),
        publishers: 1,
        ..fanout::FanoutConfig::new(ws_url(ws), format!("http://{admin}"), 5)
    };
    let r = fanout::run(&cfg).await.unwrap();
    // The first step could not keep 100/s: the ramp stops there.
    assert_eq!(r.steps.len(), 1);
    assert!(r.steps[0].publisher_bound);
    assert!(r.steps[0].achieved_publish_rate < 90.0);
    // Message k is due at 10 k ms but goes out only at about 50 k ms, after
    // the answers before it: the last of the 100 is due at 0.99 s and goes
    // out after ~5 s, about 4 s late.
    let st = &r.steps[0];
    assert!(st.publish_answer_p99_ms >= 50.0, "{st:?}");
    assert!(st.publish_behind_max_ms >= 2_000.0, "{st:?}");
    assert!(st.publish_behind_p99_ms >= 2_000.0, "{st:?}");
    assert!(
        r.stopped_because
            .as_deref()
            .is_some_and(|s| s.contains("publisher-bound")),
        "{:?}",
        r.stopped_because
    );
    // What was sent was still delivered and counted.
    assert_eq!(r.lost, 0);
    let json = result_json(&r);
    assert_eq!(json["steps"][0]["publisher_bound"], true);
    assert!(report::fanout_summary(&r).contains("PUBLISH"));
}

/// The binary's `fanout --admin-token` (or `SURGE_ADMIN_TOKEN`) is sent as
/// `Authorization: Bearer` with every publish, for a gateway with
/// `SURGE_ADMIN_TOKEN` set; without it every publish is a 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_fanout_sends_the_admin_token() {
    const TOKEN: &str = "loadgen-adm1n-token";
    let hub = Hub::new(Perturb::None);
    let ws = common::ws_server(hub.clone()).await;
    let admin = common::token_admin_server(hub.clone(), TOKEN).await;
    let fanout = |args: &[&str], env: Option<&str>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_surge-load"));
        command
            .args(["fanout", "--url", &ws_url(ws), "-n", "3", "--rate", "20"])
            .args(["--duration", "250ms", "--drain", "1s", "--threads", "1"])
            .arg("--admin")
            .arg(format!("http://{admin}"))
            .args(args)
            .env_remove("SURGE_ADMIN_TOKEN")
            .kill_on_drop(true);
        if let Some(token) = env {
            command.env("SURGE_ADMIN_TOKEN", token);
        }
        async move {
            let out = tokio::time::timeout(Duration::from_secs(60), command.output())
                .await
                .expect("the binary finishes")
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let last = stdout.lines().last().unwrap().to_owned();
            let json: serde_json::Value =
                serde_json::from_str(last.strip_prefix(report::RESULT_PREFIX).unwrap()).unwrap();
            json
        }
    };
    let json = fanout(&[], None).await;
    assert_eq!(json["published"], 0, "{json}");
    assert_eq!(json["steps"][0]["publish_errors"]["http_401"], 5, "{json}");
    let json = fanout(&["--admin-token", TOKEN], None).await;
    assert_eq!(json["published"], 5, "{json}");
    assert_eq!(json["delivered"], 15, "{json}");
    let json = fanout(&[], Some(TOKEN)).await;
    assert_eq!(json["published"], 5, "{json}");
}
