//! HTTPS: certificates chosen by SNI (an exact name, then a `*.` wildcard, then the first one),
//! TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`, and ACME TLS-ALPN-01 challenge certificates
//! (`acme-tls/1`). Certificate files are re-read when they change and on SIGHUP; a bad file keeps
//! the running certificate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The ALPN protocol of ACME's TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A certificate ready to serve, with what it covers.
pub struct Installed {
    /// DNS names from its subjectAltName, lower case (`*.example.com` for wildcards).
    pub names: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    key: Arc<CertifiedKey>,
}

impl Installed {
    /// Parses a PEM certificate chain (leaf first) and its private key.
    pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<Installed, String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the certificate file is not PEM: {e}"))?;
        let leaf = chain
            .first()
            .ok_or("the certificate file holds no certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| format!("the key file holds no PEM private key: {e}"))?;
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
            .map_err(|e| format!("the private key is not usable: {e}"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| format!("the certificate cannot be read: {e}"))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                    names.push(d.to_ascii_lowercase());
                }
            }
        }
        let (not_before, not_after) = (
            cert.validity().not_before.timestamp(),
            cert.validity().not_after.timestamp(),
        );
        drop(cert);
        let key = CertifiedKey::new(chain, signer);
        key.keys_match()
            .map_err(|e| format!("the key does not belong to the certificate: {e}"))?;
        Ok(Installed {
            names,
            not_before,
            not_after,
            key: Arc::new(key),
        })
    }

    fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| {
            n == host
                || n.strip_prefix("*.").is_some_and(|base| {
                    host.split_once('.')
                        .is_some_and(|(label, rest)| !label.is_empty() && rest == base)
                })
        })
    }

    /// When it expires, as RFC 3339.
    pub fn expires(&self) -> String {
        crate::clock::format_rfc3339(self.not_after)
    }
}

/// The certificates castellan serves; swapped whole, read on every handshake.
#[derive(Default)]
pub struct Certs {
    installed: RwLock<Vec<Arc<Installed>>>,
    /// TLS-ALPN-01 challenge certificates by domain, while an order is being validated.
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Certs")
    }
}

impl Certs {
    pub fn replace(&self, certs: Vec<Installed>) {
        *self.installed.write().unwrap_or_else(|p| p.into_inner()) =
            certs.into_iter().map(Arc::new).collect();
    }

    pub fn is_empty(&self) -> bool {
        self.installed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Sets the TLS-ALPN-01 challenge certificates (domain → key authorization), replacing the
    /// previous ones.
    pub fn set_challenges(&self, challenges: &[(String, String)]) {
        let mut map = HashMap::new();
        for (domain, key_authorization) in challenges {
            match alpn_challenge_cert(domain, key_authorization) {
                Ok(k) => {
                    map.insert(domain.clone(), Arc::new(k));
                }
                Err(e) => {
                    tracing::error!("cannot make the TLS-ALPN-01 certificate for {domain}: {e}")
                }
            }
        }
        *self.challenges.lock().unwrap_or_else(|p| p.into_inner()) = map;
    }

    fn pick(&self, host: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let installed = self.installed.read().unwrap_or_else(|p| p.into_inner());
        let host = host.map(|h| h.trim_end_matches('.').to_ascii_lowercase());
        host.as_deref()
            .and_then(|h| {
                installed
                    .iter()
                    .find(|c| c.names.iter().any(|n| n == h))
                    .or_else(|| installed.iter().find(|c| c.covers(h)))
            })
            .or(installed.first())
            .map(|c| c.key.clone())
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let challenge = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if challenge {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self
                .challenges
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&name)
                .cloned();
        }
        self.pick(hello.server_name())
    }
}

/// The server side of TLS for `certs`.
/// The listener's TLS configuration. With `client_ca`, browsers are asked for a client
/// certificate issued by it, without requiring one: a connection without a certificate goes on (and
/// meets no access level that needs one), one with a certificate the CA did not issue fails its
/// handshake.
pub fn server_config(
    certs: Arc<Certs>,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let builder = rustls::ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ]);
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read tls.client_ca {}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.map_err(|e| format!("tls.client_ca {} is not PEM: {e}", path.display()))?;
                roots.add(cert).map_err(|e| {
                    format!(
                        "tls.client_ca {} holds an unusable certificate: {e}",
                        path.display()
                    )
                })?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "tls.client_ca {} holds no certificate",
                    path.display()
                ));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("tls.client_ca {}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The subject of the client certificate a connection presented (verified during the
/// handshake), as RFC 4514 writes it, e.g. `CN=laptop-042, O=Example`.
pub fn client_subject(conn: &rustls::ServerConnection) -> Option<Arc<str>> {
    let leaf = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    Some(Arc::from(cert.subject().to_string()))
}

/// The self-signed certificate RFC 8737 asks for: the domain as its only name and the SHA-256 of
/// the key authorization in the critical acmeIdentifier extension.
fn alpn_challenge_cert(domain: &str, key_authorization: &str) -> Result<CertifiedKey, String> {
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_authorization.as_bytes());
    let mut params =
        rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
    let pair = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&pair).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(pair.serialize_der().into());
    let signer =
        rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signer))
}

/// Loads `cert` and `key` into `certs`, then re-reads them whenever either file changes (checked
/// every two seconds, so files replaced through a bind mount or a Kubernetes secret are seen) or
/// `reload` is notified (SIGHUP). A file that does not load keeps the running certificate.
pub fn load_files(certs: &Certs, cert: &Path, key: &Path) -> Result<(), String> {
    let chain = std::fs::read(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
    let private = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    let installed = Installed::from_pem(&chain, &private)
        .map_err(|e| format!("{} / {}: {e}", cert.display(), key.display()))?;
    tracing::info!(
        names = installed.names.join(", "),
        expires = installed.expires(),
        "certificate loaded from {}",
        cert.display()
    );
    certs.replace(vec![installed]);
    Ok(())
}

pub async fn watch_files(
    certs: Arc<Certs>,
    cert: PathBuf,
    key: PathBuf,
    reload: Arc<tokio::sync::Notify>,
) {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    let mut seen = (stamp(&cert), stamp(&key));
    loop {
        let signalled = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => false,
            _ = reload.notified() => true,
        };
        let now = (stamp(&cert), stamp(&key));
        if !signalled && now == seen {
            continue;
        }
        seen = now;
        if let Err(e) = load_files(&certs, &cert, &key) {
            tracing::error!("keeping the running certificate: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let pair = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&pair).unwrap();
        (cert.pem(), pair.serialize_pem())
    }

    #[test]
    fn sni_picks_exact_names_then_wildcards_then_the_first() {
        let (c1, k1) = self_signed(&["apps.example.com"]);
        let (c2, k2) = self_signed(&["*.apps.example.com"]);
        let certs = Certs::default();
        let a = Installed::from_pem(c1.as_bytes(), k1.as_bytes()).unwrap();
        let b = Installed::from_pem(c2.as_bytes(), k2.as_bytes()).unwrap();
        assert_eq!(b.names, vec!["*.apps.example.com"]);
        assert!(a.not_after > a.not_before);
        let (ka, kb) = (a.key.clone(), b.key.clone());
        certs.replace(vec![a, b]);
        let same =
            |x: Option<Arc<CertifiedKey>>, y: &Arc<CertifiedKey>| Arc::ptr_eq(&x.unwrap(), y);
        assert!(same(certs.pick(Some("apps.example.com")), &ka));
        assert!(same(certs.pick(Some("Dash.Apps.Example.com.")), &kb));
        // A wildcard covers one label only.
        assert!(same(certs.pick(Some("a.b.apps.example.com")), &ka));
        assert!(same(certs.pick(None), &ka));
    }

    #[test]
    fn mismatched_or_broken_files_are_refused_with_a_reason() {
        let (c1, _) = self_signed(&["a.example"]);
        let (_, k2) = self_signed(&["b.example"]);
        let err = Installed::from_pem(c1.as_bytes(), k2.as_bytes())
            .err()
            .unwrap();
        assert!(err.contains("does not belong"), "{err}");
        let err = Installed::from_pem(b"nonsense", k2.as_bytes())
            .err()
            .unwrap();
        assert!(
            err.contains("no certificate") || err.contains("not PEM"),
            "{err}"
        );
    }
}
