//! HTTPS (and plain HTTP) servers on the host side of a session's network,
//! standing in for the hosts an agent reaches: a certificate authority of
//! their own (its PEM for `LEASH_UPSTREAM_CA`), a leaf for the names given,
//! and a handler per request.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What a handler answers.
pub type Answer = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;
/// A request handler.
pub type Handler = Arc<dyn Fn(Request<hyper::body::Incoming>) -> Answer + Send + Sync>;

/// A CA (its certificate written to `dir/upstream-ca.pem`, returned) and a
/// server configuration with a leaf it signed for `names`, offering h2 and
/// HTTP/1.1.
pub fn tls(dir: &Path, names: &[&str]) -> (Arc<rustls::ServerConfig>, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("a CA key");
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "leash test upstream CA");
    let ca_cert = ca.self_signed(&ca_key).expect("the CA certificate");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("a leaf key");
    let leaf = rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        .expect("the names are DNS names");
    let cert = leaf.signed_by(&key, &issuer).expect("the leaf");
    let ca_path = dir.join("upstream-ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).expect("write the CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .expect("the leaf's key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (Arc::new(config), ca_path)
}

/// Serves `handler` on every address's `port` on `rt`, over TLS with `tls`,
/// plain HTTP without (HTTP/1.1 and h2 either way); a handler may take a
/// request's connection over (`hyper::upgrade::on`, for a WebSocket). A port already taken
/// fails the test with what to look at.
pub fn serve(rt: &tokio::runtime::Runtime, port: u16, tls: Option<Arc<rustls::ServerConfig>>, handler: Handler) {
    let listener =
        rt.block_on(tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))).unwrap_or_else(|e| {
            panic!(
                "bind port {port} on the host: {e} (the test serves the session's upstream on the host's port \
                 {port}; `ss -ltnp 'sport = :{port}'` shows what holds it)"
            )
        });
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    rt.spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { continue };
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |r| {
                    let answer = handler(r);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    Some(a) => {
                        let Ok(tls) = a.accept(s).await else { return };
                        let _ = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc).await;
                    }
                    None => {
                        let _ = builder.serve_connection_with_upgrades(TokioIo::new(s), svc).await;
                    }
                }
            });
        }
    });
}
