//! Certificate authorities: one per session, minted before its container
//! exists; leaf certificates per server name, minted on demand and cached.
//!
//! The CA's key lives in the proxy's memory and, so that a restarted proxy
//! can go on serving a running session, in a 0600 file under the proxy's
//! 0700 state directory, deleted when the session ends. Only the
//! certificate leaves the proxy.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// How long a session's CA is valid. Its key is destroyed when the session
/// ends, so a longer session would need a new CA installed.
pub const CA_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a leaf is valid (and cached a little less).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
const LEAF_REUSE: Duration = Duration::from_secs(23 * 3600);
/// Leaves cached per session before the cache starts over.
const LEAF_CACHE: usize = 4096;

/// A session's certificate authority.
pub struct SessionCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    /// The certificate, for the container's trust store.
    pub cert_pem: String,
    key_pem: String,
    provider: Arc<CryptoProvider>,
    leaves: Mutex<HashMap<String, (Instant, Arc<CertifiedKey>)>>,
}

impl std::fmt::Debug for SessionCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCa").finish_non_exhaustive()
    }
}

fn offset(d: Duration, forward: bool) -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    let d = time::Duration::try_from(d).unwrap_or(time::Duration::ZERO);
    if forward { now + d } else { now - d }
}

impl SessionCa {
    /// Mints a new CA for `session`.
    pub fn mint(session: &str, provider: Arc<CryptoProvider>) -> anyhow::Result<SessionCa> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("leash session {session}"));
        dn.push(DnType::OrganizationName, "leash");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = offset(Duration::from_secs(3600), false);
        params.not_after = offset(CA_VALIDITY, true);
        let cert = params.self_signed(&key).context("signing the CA")?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        Ok(Self::assemble(cert_pem, key_pem, cert.der().clone(), Issuer::new(params, key), provider))
    }

    /// A CA saved by [`SessionCa::save`].
    pub fn load(dir: &Path, session: &str, provider: Arc<CryptoProvider>) -> anyhow::Result<SessionCa> {
        let (cert_path, key_path) = paths(dir, session);
        let key_pem = read_private(&key_path)?;
        let cert_pem =
            std::fs::read_to_string(&cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
        let key = KeyPair::from_pem(&key_pem).with_context(|| format!("{}: not a key", key_path.display()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .with_context(|| format!("{}: not a CA certificate", cert_path.display()))?;
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("{}: {e:?}", cert_path.display()))?;
        Ok(Self::assemble(cert_pem, key_pem, der, issuer, provider))
    }

    fn assemble(
        cert_pem: String,
        key_pem: String,
        cert_der: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
        provider: Arc<CryptoProvider>,
    ) -> SessionCa {
        SessionCa { issuer, cert_der, cert_pem, key_pem, provider, leaves: Mutex::new(HashMap::new()) }
    }

    /// Saves the certificate and key for a restarted proxy: the key 0600,
    /// in `dir`, which must be root's and 0700.
    pub fn save(&self, dir: &Path, session: &str) -> anyhow::Result<()> {
        private_dir(dir)?;
        let (cert_path, key_path) = paths(dir, session);
        std::fs::write(&cert_path, &self.cert_pem).with_context(|| format!("writing {}", cert_path.display()))?;
        write_private(dir, &key_path, self.key_pem.as_bytes())
    }

    /// The leaf certificate for a server name (or IP address), with this CA
    /// after it in the chain.
    pub fn leaf(&self, name: &str) -> anyhow::Result<Arc<CertifiedKey>> {
        let mut leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, leaf)) = leaves.get(name)
            && at.elapsed() < LEAF_REUSE
        {
            return Ok(leaf.clone());
        }
        let leaf = Arc::new(self.mint_leaf(name)?);
        if leaves.len() >= LEAF_CACHE {
            leaves.clear();
        }
        leaves.insert(name.to_owned(), (Instant::now(), leaf.clone()));
        Ok(leaf)
    }

    fn mint_leaf(&self, name: &str) -> anyhow::Result<CertifiedKey> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.to_owned().try_into().with_context(|| format!("server name {name:?}"))?),
        }];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = offset(Duration::from_secs(3600), false);
        params.not_after = offset(LEAF_VALIDITY, true);
        let key = KeyPair::generate().context("generating a leaf key")?;
        let cert = params.signed_by(&key, &self.issuer).context("signing a leaf")?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = self.provider.key_provider.load_private_key(der).context("loading a leaf key")?;
        Ok(CertifiedKey::new(vec![cert.der().clone(), self.cert_der.clone()], signing))
    }
}

fn paths(dir: &Path, session: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{session}.crt")), dir.join(format!("{session}.key")))
}

/// Deletes a session's saved CA.
pub fn forget(dir: &Path, session: &str) {
    let (cert, key) = paths(dir, session);
    let _ = std::fs::remove_file(key);
    let _ = std::fs::remove_file(cert);
}

/// Creates `dir` 0700 when missing; refuses one that is not root's or that
/// others can reach.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let meta = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mode = meta.mode() & 0o777;
    if meta.uid() != 0 || mode & 0o077 != 0 {
        bail!("{} must be root's and 0700 (it is uid {}, {mode:o}): it holds CA keys", dir.display(), meta.uid());
    }
    Ok(())
}

/// Writes `bytes` to `path` in `dir` (root's and 0700), 0600, replacing it
/// whole (a reader never sees half).
pub(crate) fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    private_dir(dir)?;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::io::Write::write_all(&mut f, bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Reads a file [`write_private`] wrote: refused unless root's and 0600.
pub(crate) fn read_private(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.uid() != 0 || meta.mode() & 0o077 != 0 {
        bail!("{}: a private file must be root's and 0600 (it is {:o})", path.display(), meta.mode() & 0o777);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The CA certificates of a PEM bundle.
pub fn pem_certificates(text: &[u8]) -> Vec<CertificateDer<'static>> {
    rustls::pki_types::pem::PemObject::pem_slice_iter(text).filter_map(Result::ok).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    #[test]
    fn leaves_chain_to_the_session_ca_and_are_cached() {
        let ca = SessionCa::mint("s1", provider()).unwrap();
        assert!(ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let a = ca.leaf("api.example.test").unwrap();
        assert_eq!(a.cert.len(), 2);
        assert_eq!(a.cert[1], ca.cert_der);
        assert!(Arc::ptr_eq(&a, &ca.leaf("api.example.test").unwrap()), "cached");
        assert!(ca.leaf("10.0.0.1").is_ok(), "an IP SAN");
        assert!(ca.leaf("bäd.test").is_err(), "not a DNS name");
        // Verified by rustls against the CA as root.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().unwrap();
        let name = rustls::pki_types::ServerName::try_from("api.example.test").unwrap();
        verifier.verify_server_cert(&a.cert[0], &a.cert[1..], &name, &[], rustls::pki_types::UnixTime::now()).unwrap();
        let other = rustls::pki_types::ServerName::try_from("other.test").unwrap();
        assert!(verifier.verify_server_cert(&a.cert[0], &[], &other, &[], rustls::pki_types::UnixTime::now()).is_err());
    }

    #[test]
    fn a_saved_ca_loads_back_and_loose_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("ca");
        let ca = SessionCa::mint("s2", provider()).unwrap();
        ca.save(&keys, "s2").unwrap();
        let back = SessionCa::load(&keys, "s2", provider()).unwrap();
        assert_eq!(back.cert_pem, ca.cert_pem);
        assert!(back.leaf("x.test").is_ok());
        std::fs::set_permissions(keys.join("s2.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(SessionCa::load(&keys, "s2", provider()).is_err());
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(private_dir(&keys).unwrap_err().to_string().contains("0700"));
        forget(&keys, "s2");
        assert!(!keys.join("s2.key").exists());
    }
}
