//! Optional OTLP export of events (the logs signal) to a collector, for
//! fleets: off unless `[leashd] otlp_endpoint` (or `--otlp-endpoint`) names
//! one. gRPC over plain HTTP/2 (a collector or agent on the host or the
//! local network). It follows the hub with a queue of its own, so a slow or
//! absent collector never holds up anything else: what it cannot send after
//! retries, or cannot queue, is counted (`leashctl status`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio_util::sync::CancellationToken;

use crate::hub::{Hub, Stamped};

/// Events per export.
const BATCH: usize = 512;
/// The longest an event waits for its batch.
const LINGER: Duration = Duration::from_secs(1);
/// Attempts per batch before it is counted as failed.
const ATTEMPTS: u32 = 3;
/// Events queued for the exporter.
const QUEUE: usize = 65_536;

/// The exporter's counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events the collector accepted.
    pub exported: AtomicU64,
    /// Events given up on (the collector refused or was unreachable).
    pub failed: Arc<AtomicU64>,
}

/// Parses an endpoint: `http://host:port` (OTLP/gRPC, usually port 4317).
pub fn parse_endpoint(s: &str) -> Result<tonic::transport::Endpoint, String> {
    if !s.starts_with("http://") {
        return Err(format!(
            "otlp_endpoint {s:?}: give http://HOST:PORT (OTLP over gRPC without TLS, to a collector you run)"
        ));
    }
    tonic::transport::Endpoint::from_shared(s.to_owned())
        .map(|e| e.connect_timeout(Duration::from_secs(3)).timeout(Duration::from_secs(10)))
        .map_err(|e| format!("otlp_endpoint {s:?}: {e}"))
}

/// Starts exporting what `hub` publishes from now on to `endpoint`.
pub fn start(endpoint: tonic::transport::Endpoint, hub: &Hub, shutdown: CancellationToken) -> Arc<Counters> {
    let counters = Arc::new(Counters::default());
    // What the queue cannot take is lost to the collector like a failed batch.
    let mut live = hub.subscribe_with(QUEUE, counters.failed.clone());
    let c = counters.clone();
    tokio::spawn(async move {
        let channel = endpoint.connect_lazy();
        let mut client = LogsServiceClient::new(channel);
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
        loop {
            let mut batch: Vec<Arc<Stamped>> = Vec::with_capacity(BATCH);
            tokio::select! {
                () = shutdown.cancelled() => return,
                e = live.recv() => match e {
                    Some(e) => batch.push(e),
                    None => return,
                },
            }
            let deadline = tokio::time::Instant::now() + LINGER;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, live.recv()).await {
                    Ok(Some(e)) => batch.push(e),
                    Ok(None) | Err(_) => break,
                }
            }
            let request = request(&host, &batch);
            let mut sent = false;
            for attempt in 0..ATTEMPTS {
                match client.export(request.clone()).await {
                    Ok(r) => {
                        let rejected =
                            r.into_inner().partial_success.map_or(0, |p| p.rejected_log_records.max(0) as u64);
                        c.exported.fetch_add(batch.len() as u64 - rejected, Ordering::Relaxed);
                        c.failed.fetch_add(rejected, Ordering::Relaxed);
                        sent = true;
                        break;
                    }
                    Err(s) => {
                        tracing::warn!(attempt = attempt + 1, error = %s.message(), "OTLP export failed");
                        tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                    }
                }
            }
            if !sent {
                c.failed.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        }
    });
    counters
}

fn text(s: impl Into<String>) -> Option<AnyValue> {
    Some(AnyValue { value: Some(any_value::Value::StringValue(s.into())) })
}

fn kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue { key: key.to_owned(), value: text(value) }
}

/// One export request: a resource (service.name = leash, the host), one
/// scope, a log record per event with the event's fields as attributes.
fn request(host: &str, batch: &[Arc<Stamped>]) -> ExportLogsServiceRequest {
    let records = batch.iter().map(|s| record(&s.to_proto())).collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "leash"), kv("host.name", host)],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "leashd".into(),
                    version: leash_core::VERSION.into(),
                    ..Default::default()
                }),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn record(e: &leash_proto::v1::Event) -> LogRecord {
    let time = e.time_unix_nanos.max(0) as u64;
    let decision = leash_proto::event::decision_name(e.decision).unwrap_or("");
    // A refusal is a warning; everything else is information.
    let (severity, severity_text) = if decision == "deny" { (13, "WARN") } else { (9, "INFO") };
    let mut attributes = vec![
        kv("leash.action", &e.action),
        kv("leash.resource", &e.resource),
        kv("leash.kind", leash_proto::event::kind_name(e.kind)),
        KeyValue {
            key: "leash.seq".into(),
            value: Some(AnyValue { value: Some(any_value::Value::IntValue(e.seq as i64)) }),
        },
    ];
    if !e.session.is_empty() {
        attributes.push(kv("leash.session", &e.session));
    }
    if !decision.is_empty() {
        attributes.push(kv("leash.decision", decision));
    }
    if let Some(m) = leash_proto::event::mode_name(e.mode) {
        attributes.push(kv("leash.mode", m));
    }
    if e.would_deny {
        attributes.push(kv("leash.would_deny", "true"));
    }
    if !e.policy_ids.is_empty() {
        attributes.push(kv("leash.policies", e.policy_ids.join(",")));
    }
    if e.pid != 0 {
        attributes.push(kv("process.pid", e.pid.to_string()));
    }
    if !e.executable.is_empty() {
        attributes.push(kv("process.executable.path", &e.executable));
    }
    attributes.extend(e.details.iter().map(|(k, v)| kv(&format!("leash.{k}"), v)));
    let body = match decision {
        "" => format!("{} {}", e.action, e.resource),
        d => format!("{} {} {d}", e.action, e.resource),
    };
    LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: time,
        severity_number: severity,
        severity_text: severity_text.into(),
        event_name: e.action.clone(),
        body: text(body),
        attributes,
        ..Default::default()
    }
}
