//! An OTLP/gRPC logs receiver built from the OpenTelemetry protocol's own
//! definitions (opentelemetry-proto), for tests of leashd's export.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::logs::v1::LogRecord;

/// A record with its resource's attributes.
pub type Received = (Vec<(String, String)>, LogRecord);

#[derive(Clone, Default)]
pub struct Receiver {
    pub records: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        for rl in req.into_inner().resource_logs {
            let resource: Vec<(String, String)> = rl
                .resource
                .map(|r| r.attributes.into_iter().map(|kv| (kv.key, text(kv.value.and_then(|v| v.value)))).collect())
                .unwrap_or_default();
            for sl in rl.scope_logs {
                for r in sl.log_records {
                    self.records.lock().unwrap().push((resource.clone(), r));
                }
            }
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

pub fn text(v: Option<AnyValue>) -> String {
    match v {
        Some(AnyValue::StringValue(s)) => s,
        Some(AnyValue::IntValue(i)) => i.to_string(),
        _ => String::new(),
    }
}

pub fn attr(r: &LogRecord, key: &str) -> Option<String> {
    r.attributes.iter().find(|kv| kv.key == key).map(|kv| text(kv.value.clone().and_then(|v| v.value)))
}

/// Serves a receiver on a loopback port of `rt`: it and its address.
pub fn serve(rt: &tokio::runtime::Runtime) -> (Receiver, std::net::SocketAddr) {
    let receiver = Receiver::default();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let service = LogsServiceServer::new(receiver.clone());
    rt.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    (receiver, addr)
}
