//! A layer that logs every call answered with an error status (unknown
//! methods, oversized or undecodable messages, refused callers), so that
//! malformed input leaves a trace while the daemon keeps serving.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http;

/// The layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogFailuresLayer;

impl<S> tower::Layer<S> for LogFailuresLayer {
    type Service = LogFailures<S>;

    fn layer(&self, inner: S) -> LogFailures<S> {
        LogFailures { inner }
    }
}

/// The service the layer wraps around the routes.
#[derive(Clone, Debug)]
pub struct LogFailures<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for LogFailures<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            // Errors decided before a handler streams anything are
            // "trailers-only" responses: the status is in the headers.
            if let Some(code) = res.headers().get("grpc-status").and_then(|v| v.to_str().ok())
                && code != "0"
            {
                let code = tonic::Code::from_i32(code.parse().unwrap_or(2));
                let message = res.headers().get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("");
                tracing::info!(path, ?code, message = %message.chars().take(200).collect::<String>(), "call failed");
            }
            Ok(res)
        })
    }
}
