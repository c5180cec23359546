//! Automatic certificates (RFC 8555) with HTTP-01, TLS-ALPN-01 or DNS-01 (wildcards; see
//! [`super::dns01`]), and the plain-HTTP listener.
//!
//! The account and certificates live in the store, so every replica serves the same certificate
//! and only one orders at a time (a lease in the store). Challenges are written to the store too,
//! so whichever replica the CA's validator reaches answers them. A certificate is renewed once two
//! thirds of its lifetime have passed. Progress is logged as it happens; failures say what to check.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use crate::config::{Acme, AcmeChallenge};
use crate::runtime::State;
use crate::runtime::tls::{Certs, Installed};
use crate::server::dns01::{self, Provider as _};
use crate::store::StoredCertificate;

/// How long one replica may hold the ordering lease (renewed while ordering).
const LEASE_SECS: i64 = 600;

/// When a certificate valid from `not_before` to `not_after` is renewed: at two thirds.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before) * 2 / 3
}

/// Keeps a valid certificate for `acme.domains` installed in `certs`, for as long as castellan runs.
pub async fn run(state: Arc<State>, acme: Acme, certs: Arc<Certs>) {
    let mut domains = acme.domains.clone();
    domains.sort();
    let key = domains.join(",");
    let holder = lease_holder();
    if acme.challenge == AcmeChallenge::TlsAlpn01 {
        tokio::spawn(follow_alpn_challenges(state.clone(), certs.clone()));
    }
    let mut installed_at: Option<i64> = None;
    let mut backoff = Duration::from_secs(10);
    loop {
        let now = crate::clock::now();
        let stored = match state.store.acme_certificate(&key).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("ACME: cannot read the stored certificate: {e}");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        if let Some(c) = &stored
            && installed_at != Some(c.not_before)
        {
            match Installed::from_pem(c.chain_pem.as_bytes(), c.key_pem.as_bytes()) {
                Ok(i) => {
                    tracing::info!(domains = %key, expires = i.expires(), "ACME: certificate installed");
                    certs.replace(vec![i]);
                    installed_at = Some(c.not_before);
                }
                Err(e) => tracing::error!(
                    "ACME: the stored certificate is unusable ({e}); ordering a new one"
                ),
            }
        }
        let due = stored
            .as_ref()
            .filter(|c| installed_at == Some(c.not_before))
            .map_or(now, |c| renew_at(c.not_before, c.not_after));
        if now < due {
            // Look again at least every minute: another replica may have renewed it.
            tokio::time::sleep(Duration::from_secs((due - now).clamp(1, 60) as u64)).await;
            continue;
        }
        match state.store.take_lease("acme", &holder, LEASE_SECS).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!("ACME: another replica is ordering the certificate; waiting for it");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            Err(e) => {
                tracing::warn!("ACME: cannot take the ordering lease: {e}");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        }
        // Another replica may have finished while we waited for the lease.
        let fresh = state
            .store
            .acme_certificate(&key)
            .await
            .ok()
            .flatten()
            .is_some_and(|c| renew_at(c.not_before, c.not_after) > crate::clock::now());
        let result = if fresh {
            Ok(())
        } else {
            order(&state, &acme, &domains, &key).await
        };
        let _ = state.store.release_lease("acme", &holder).await;
        match result {
            Ok(()) => backoff = Duration::from_secs(10),
            Err(e) => {
                tracing::error!(
                    "ACME: could not get a certificate for {key}: {e}. Trying again in {} s",
                    backoff.as_secs()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(3600));
            }
        }
    }
}

/// Places an order, answers its challenges and stores the certificate.
async fn order(state: &State, acme: &Acme, domains: &[String], key: &str) -> Result<(), String> {
    let account = account(state, acme).await?;
    let identifiers: Vec<Identifier> = domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| explain(&e))?;
    tracing::info!(domains = %key, "ACME: order placed");
    let (kind, label) = match acme.challenge {
        AcmeChallenge::Http01 => (ChallengeType::Http01, "http-01"),
        AcmeChallenge::TlsAlpn01 => (ChallengeType::TlsAlpn01, "tls-alpn-01"),
        AcmeChallenge::Dns01(_) => (ChallengeType::Dns01, "dns-01"),
    };
    let mut answered = Answered::default();
    let result = answer(state, acme, &mut order, kind, label, &mut answered).await;
    let status = match result {
        Ok(()) => {
            let retry = RetryPolicy::new()
                .initial_delay(Duration::from_millis(500))
                .timeout(Duration::from_secs(120));
            order.poll_ready(&retry).await.map_err(|e| explain(&e))
        }
        Err(e) => Err(e),
    };
    answered.clear(state, acme).await;
    let status = status?;
    if status != OrderStatus::Ready {
        return Err(format!(
            "the CA could not validate the {label} challenge (order {status:?}). {}",
            hint(&acme.challenge)
        ));
    }
    tracing::info!(domains = %key, "ACME: challenges validated");
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(500))
        .timeout(Duration::from_secs(120));
    let pair = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(domains.to_vec()).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&pair).map_err(|e| e.to_string())?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| explain(&e))?;
    let chain = order
        .poll_certificate(&retry)
        .await
        .map_err(|e| explain(&e))?;
    let key_pem = pair.serialize_pem();
    let installed = Installed::from_pem(chain.as_bytes(), key_pem.as_bytes())?;
    let stored = StoredCertificate {
        chain_pem: chain,
        key_pem,
        not_before: installed.not_before,
        not_after: installed.not_after,
    };
    state
        .store
        .save_acme_certificate(key, &stored)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(domains = %key, expires = installed.expires(), "ACME: certificate issued");
    Ok(())
}

/// What an order left to clean up: challenge answers in the store, TXT records in DNS.
#[derive(Default)]
struct Answered {
    tokens: Vec<String>,
    records: Vec<(String, String)>,
}

impl Answered {
    async fn clear(self, state: &State, acme: &Acme) {
        let _ = state.store.clear_acme_challenges(&self.tokens).await;
        if let AcmeChallenge::Dns01(dns) = &acme.challenge {
            let provider = dns01::provider(dns);
            for (name, value) in &self.records {
                if let Err(e) = provider.withdraw(name, value).await {
                    tracing::warn!("ACME: cannot remove the TXT record at {name}: {e}");
                }
            }
        }
    }
}

/// Answers each pending authorization's challenge and tells the CA it is ready.
async fn answer(
    state: &State,
    acme: &Acme,
    order: &mut instant_acme::Order,
    kind: ChallengeType,
    label: &str,
    answered: &mut Answered,
) -> Result<(), String> {
    let mut authorizations = order.authorizations();
    while let Some(a) = authorizations.next().await {
        let mut a = a.map_err(|e| explain(&e))?;
        match a.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("an authorization is {other:?}")),
        }
        let domain = a.identifier().to_string();
        let mut challenge = a
            .challenge(kind.clone())
            .ok_or_else(|| format!("the CA offers no {label} challenge for {domain}"))?;
        let key_authorization = challenge.key_authorization();
        match &acme.challenge {
            AcmeChallenge::Dns01(dns) => {
                let name = dns01::record_name(&domain);
                let value = key_authorization.dns_value();
                dns01::provider(dns).publish(&name, &value).await?;
                tracing::info!(%domain, "ACME: TXT record published at {name}");
                answered.records.push((name, value));
            }
            AcmeChallenge::Http01 | AcmeChallenge::TlsAlpn01 => {
                state
                    .store
                    .put_acme_challenge(
                        &challenge.token,
                        &domain,
                        label,
                        key_authorization.as_str(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                answered.tokens.push(challenge.token.clone());
            }
        }
        if acme.challenge == AcmeChallenge::TlsAlpn01
            && let Some(certs) = &state.certs
        {
            // Answer at once here; other replicas pick it up from the store within a second.
            let all = state
                .store
                .tls_alpn01_challenges()
                .await
                .map_err(|e| e.to_string())?;
            certs.set_challenges(&all);
        }
        challenge.set_ready().await.map_err(|e| explain(&e))?;
        tracing::info!(%domain, "ACME: {label} challenge ready for validation");
    }
    Ok(())
}

/// The account for the directory: from the store, or registered now and stored.
async fn account(state: &State, acme: &Acme) -> Result<Account, String> {
    let builder = || match &acme.ca_root {
        Some(root) => Account::builder_with_root(root)
            .map_err(|e| format!("tls.acme.ca_root {}: {e}", root.display())),
        None => Account::builder().map_err(|e| e.to_string()),
    };
    if let Some(saved) = state
        .store
        .acme_account(&acme.directory)
        .await
        .map_err(|e| e.to_string())?
    {
        let credentials: AccountCredentials = serde_json::from_str(&saved)
            .map_err(|e| format!("the stored ACME account is unreadable: {e}"))?;
        return builder()?
            .from_credentials(credentials)
            .await
            .map_err(|e| explain(&e));
    }
    let contact: Vec<String> = acme.email.iter().map(|e| format!("mailto:{e}")).collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            acme.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("cannot register with {}: {}", acme.directory, explain(&e)))?;
    state
        .store
        .save_acme_account(
            &acme.directory,
            &serde_json::to_string(&credentials).expect("credentials serialise"),
        )
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(directory = %acme.directory, "ACME: account registered");
    Ok(account)
}

/// An ACME error with the likely cause.
fn explain(e: &instant_acme::Error) -> String {
    let text = e.to_string();
    let hint = if text.contains("rateLimited") {
        " (the CA's rate limit: wait until it passes, or use the CA's staging directory while testing)"
    } else if text.contains("error:dns") || text.contains("resolving") || text.contains("NXDOMAIN")
    {
        " (DNS: check that the domain's A/AAAA records point at this machine)"
    } else if text.contains("error:connection")
        || text.contains("error:incorrectResponse")
        || text.contains("error:unauthorized")
        || text.contains("error:tls")
    {
        " (the CA could not check the challenge here: check that the domain points at this machine and that port 80 (http-01) or 443 (tls-alpn-01) is reachable from the internet)"
    } else if matches!(
        e,
        instant_acme::Error::Http(_) | instant_acme::Error::Other(_)
    ) {
        " (cannot reach the CA: check tls.acme.directory, outbound HTTPS, and tls.acme.ca_root for a private CA)"
    } else {
        ""
    };
    format!("{text}{hint}")
}

fn hint(challenge: &AcmeChallenge) -> &'static str {
    match challenge {
        AcmeChallenge::Http01 => {
            "Check that the domain resolves to this machine and that port 80 (tls.http_listen) is reachable from the internet"
        }
        AcmeChallenge::TlsAlpn01 => {
            "Check that the domain resolves to this machine and that port 443 (listen) is reachable from the internet, without a TLS-terminating proxy in front"
        }
        AcmeChallenge::Dns01(_) => {
            "Check that tls.acme.dns.server is the primary of the zone the domain's NS records name, and that its secondaries have the TXT record (zone transfers or NOTIFY)"
        }
    }
}

/// Keeps this replica's TLS-ALPN-01 challenge certificates in step with the store.
async fn follow_alpn_challenges(state: Arc<State>, certs: Arc<Certs>) {
    let mut last: Vec<(String, String)> = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(now) = state.store.tls_alpn01_challenges().await
            && now != last
        {
            certs.set_challenges(&now);
            last = now;
        }
    }
}

/// This process, as the store's leases name their holder: host name and process id.
pub fn lease_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "castellan".into());
    format!("{host}:{}", std::process::id())
}

/// The plain-HTTP listener beside HTTPS: ACME HTTP-01 answers, and a permanent redirect to HTTPS
/// for everything else (to a host castellan serves; any other `Host` goes to `public_url`).
pub async fn serve_http(state: Arc<State>, listener: tokio::net::TcpListener) {
    // HTTP/1 as the main listener serves it (its header size limit and timeouts).
    let protocols = Arc::new(super::Protocols::new(super::timeouts::Timeouts::default()));
    let shutdown = Arc::new(super::graceful::Shutdown::default());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        let (protocols, shutdown) = (protocols.clone(), shutdown.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                Box::pin(async move {
                    Ok::<_, std::convert::Infallible>(http_answer(&state, req).await)
                })
            });
            let _ = protocols
                .serve(stream, super::Protocol::Http1, service, &shutdown)
                .await;
        });
    }
}

async fn http_answer(
    state: &State,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<crate::web::Body> {
    use http::{StatusCode, header};
    if let Some(token) = req
        .uri()
        .path()
        .strip_prefix("/.well-known/acme-challenge/")
    {
        return match state.store.http01_key_authorization(token).await {
            Ok(Some(ka)) => {
                let mut r = http::Response::new(crate::web::full(ka));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/octet-stream"),
                );
                r
            }
            Ok(None) => crate::web::failure::Failure::not_found("no such challenge").plain(),
            Err(e) => {
                tracing::error!("ACME: answering an HTTP-01 challenge: {e}");
                crate::web::failure::Failure::store_unavailable().plain()
            }
        };
    }
    let public = &state.config.public_url;
    let asked = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| {
            h.rsplit_once(':')
                .map_or(h, |(host, _)| host)
                .to_ascii_lowercase()
        });
    let ours = asked.filter(|h| {
        public.host_str() == Some(h.as_str())
            || state.config.apps.iter().any(|a| a.host == *h)
            || matches!(&state.config.tls, Some(t) if matches!(&t.certificates, crate::config::Certificates::Acme(a) if a.covers(h)))
    });
    let host = ours.unwrap_or_else(|| public.host_str().unwrap_or("localhost").to_string());
    let port = match state.config.listen.port() {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let target = format!(
        "https://{host}{port}{}",
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let mut r = http::Response::new(crate::web::full(String::new()));
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = http::HeaderValue::from_str(&target) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn renewal_is_at_two_thirds_of_the_lifetime() {
        assert_eq!(super::renew_at(0, 90 * 86400), 60 * 86400);
        assert_eq!(super::renew_at(100, 130), 120);
    }
}
