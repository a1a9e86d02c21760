//! OTLP export of events: a real leashd exporting to an OTLP/gRPC logs
//! receiver built from the OpenTelemetry protocol's own definitions
//! (opentelemetry-proto), and to nothing at all.

use std::time::Duration;

use leash_testkit::{Stack, eventually, require_root};

mod common;
use common::otlp::{attr, text};

#[test]
fn events_are_exported_to_an_otlp_collector_and_an_absent_one_is_counted() {
    if !require_root("events_are_exported_to_an_otlp_collector") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (receiver, addr) = common::otlp::serve(&rt);

    let mut stack = Stack::new();
    stack.start_leashd_with(|c| {
        c.arg("--otlp-endpoint").arg(format!("http://{addr}"));
    });
    stack.wait_healthy(Duration::from_secs(10));
    // A change made now is exported too.
    let add = stack.leashctl(&[
        "policy",
        "add",
        "permit (principal, action == Action::\"FileOpen\", resource == File::\"/otlp\");",
    ]);
    assert!(add.status.success(), "{add:?}");
    let records = eventually(Duration::from_secs(10), "the events at the collector", || {
        let r = receiver.records.lock().unwrap().clone();
        r.iter().any(|(_, r)| attr(r, "leash.action").as_deref() == Some("policy.edit")).then_some(r)
    });
    let (resource, start) =
        records.iter().find(|(_, r)| attr(r, "leash.action").as_deref() == Some("daemon.start")).expect("daemon.start");
    assert!(resource.contains(&("service.name".to_owned(), "leash".to_owned())), "{resource:?}");
    assert_eq!(attr(start, "leash.resource").as_deref(), Some("leashd"));
    assert!(start.time_unix_nano > 0 && start.severity_text == "INFO");
    assert_eq!(text(start.body.clone().and_then(|b| b.value)), "daemon.start leashd");
    // In publication order, each once.
    let seqs: Vec<i64> = records.iter().filter_map(|(_, r)| attr(r, "leash.seq")?.parse().ok()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // The counters follow the collector's answers.
    eventually(Duration::from_secs(10), "the exported events counted", || {
        let otlp = stack.status()?["host"]["otlp"].as_str()?.to_owned();
        (otlp.ends_with("exported, 0 failed") && !otlp.starts_with("0 ")).then_some(())
    });

    // A collector that is not there: leashd carries on, and says what it lost.
    let mut other = Stack::new();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    other.start_leashd_with(|c| {
        c.arg("--otlp-endpoint").arg(format!("http://{dead}"));
    });
    other.wait_healthy(Duration::from_secs(10));
    eventually(Duration::from_secs(20), "the failed export counted", || {
        let s = other.status()?;
        let otlp = s["host"]["otlp"].as_str()?.to_owned();
        (!otlp.ends_with(" 0 failed")).then_some(otlp)
    });
    // A bad endpoint is a usage error.
    let mut third = Stack::new();
    third.start_leashd_with(|c| {
        c.arg("--otlp-endpoint").arg("https://collector.example:4317");
    });
    assert_eq!(third.wait_leashd(Duration::from_secs(10)), Some(64));
}
