//! ACME's DNS-01 challenge (RFC 8555 §8.4): control of a name, wildcards included, proven by a TXT
//! record at `_acme-challenge.NAME` that castellan writes through a DNS provider.
//!
//! A provider is the two operations of [`Provider`]: publish a TXT record (beside any others at
//! the name: a certificate for `example.com` and `*.example.com` needs two at once) and return
//! when the zone's authoritative server answers with it, and withdraw exactly that record. The
//! one castellan has is RFC 2136 dynamic update signed with TSIG (RFC 8945), which BIND, PowerDNS,
//! Knot, NSD-fronted setups and Windows DNS accept. A provider for a cloud DNS API is another
//! implementation of the same two operations (`docs/https.md` sketches Cloud DNS and Route 53).

pub mod wire;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{DnsProvider, TsigKey};
use wire::Change;

/// How long a TXT record lives in resolvers' caches: short, as it is only needed for minutes.
const TTL: u32 = 60;
/// How long one exchange with the DNS server may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a published record may take to be answered by the server.
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes and removes DNS-01 TXT records in a DNS service.
pub(crate) trait Provider {
    /// Adds the TXT record `value` at `name`, beside any others there, and returns once the
    /// zone's server answers with it.
    fn publish(&self, name: &str, value: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// Removes exactly the TXT record `value` at `name`.
    fn withdraw(&self, name: &str, value: &str) -> impl Future<Output = Result<(), String>> + Send;
}

/// The provider the configuration names.
pub(crate) fn provider(config: &DnsProvider) -> impl Provider + '_ {
    match config {
        DnsProvider::Rfc2136 { server, key } => Rfc2136 { server, key },
    }
}

/// What `castellan check-config` learned of DNS-01's server.
#[derive(Debug)]
pub enum Checked {
    /// The zone the record will go in; the server took the key.
    Zone(String),
    /// The server could not be reached from here (which says nothing about the key).
    Unreachable(String),
    /// The server answered, and what it said is wrong: the key, the zone, the server.
    Refused(String),
}

/// For `castellan check-config`: is the server reachable, authoritative for `domain`'s zone, and
/// does it take the key? Finding the zone is a query signed with the key, which changes nothing.
pub async fn check(config: &DnsProvider, domain: &str) -> Checked {
    match config {
        DnsProvider::Rfc2136 { server, key } => {
            let target = server_address(server);
            let reach = tokio::net::TcpStream::connect(&target);
            match tokio::time::timeout(EXCHANGE_TIMEOUT, reach).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Checked::Unreachable(format!("cannot reach {target}: {e}")),
                Err(_) => return Checked::Unreachable(format!("{target} did not answer")),
            }
            match (Rfc2136 { server, key })
                .zone_of(&record_name(domain))
                .await
            {
                Ok(zone) => Checked::Zone(zone),
                Err(e) => Checked::Refused(e),
            }
        }
    }
}

/// Where to connect for `server`: `host:port`, `[v6]:port`, or a bare host or address on port 53.
fn server_address(server: &str) -> String {
    if server.parse::<std::net::SocketAddr>().is_ok() {
        return server.to_string();
    }
    if let Ok(ip) = server.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return std::net::SocketAddr::new(ip, 53).to_string();
    }
    match server.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => server.into(),
        _ => format!("{server}:53"),
    }
}

/// The name whose TXT record proves `domain` (`*.example.com` is proven at `example.com`'s).
pub fn record_name(domain: &str) -> String {
    format!("_acme-challenge.{}", domain.trim_start_matches("*."))
}

/// RFC 2136 dynamic updates to a zone's primary server, signed with a TSIG key.
struct Rfc2136<'a> {
    /// `host:port` or `host` (port 53).
    server: &'a str,
    key: &'a TsigKey,
}

impl Provider for Rfc2136<'_> {
    async fn publish(&self, name: &str, value: &str) -> Result<(), String> {
        let zone = self.zone_of(name).await?;
        self.update(&zone, Change::Add, name, value).await?;
        let started = std::time::Instant::now();
        loop {
            if self.answers(name, value).await? {
                return Ok(());
            }
            if started.elapsed() > VISIBLE_TIMEOUT {
                return Err(format!(
                    "{} accepted the TXT record at {name} but does not answer with it after {} s",
                    self.server,
                    VISIBLE_TIMEOUT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn withdraw(&self, name: &str, value: &str) -> Result<(), String> {
        let zone = self.zone_of(name).await?;
        self.update(&zone, Change::Delete, name, value).await
    }
}

impl Rfc2136<'_> {
    /// One request and its answer over TCP (updates and their answers can exceed UDP's 512 bytes).
    async fn exchange(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let target = server_address(self.server);
        let io = async {
            let mut stream = tokio::net::TcpStream::connect(&target).await?;
            let mut framed = (message.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(message);
            stream.write_all(&framed).await?;
            let len = stream.read_u16().await? as usize;
            let mut answer = vec![0; len];
            stream.read_exact(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        match tokio::time::timeout(EXCHANGE_TIMEOUT, io).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(format!(
                "cannot reach the DNS server {target} over TCP: {e} (check tls.acme.dns.server)"
            )),
            Err(_) => Err(format!(
                "the DNS server {target} did not answer within {} s (check tls.acme.dns.server and that TCP port 53 is open to it)",
                EXCHANGE_TIMEOUT.as_secs()
            )),
        }
    }

    async fn ask(&self, message: &[u8], id: u16) -> Result<(wire::Response, Vec<u8>), String> {
        let answer = self.exchange(message).await?;
        let response =
            wire::parse(&answer).map_err(|e| format!("the DNS server {}: {e}", self.server))?;
        if response.id != id {
            return Err(format!(
                "the DNS server {} answered another question",
                self.server
            ));
        }
        Ok((response, answer))
    }

    /// The zone that holds `name`, from the SOA record the server gives with its answer.
    async fn zone_of(&self, name: &str) -> Result<String, String> {
        // Signed, as certbot's RFC 2136 plugin asks: a server whose views are chosen by the key
        // answers for the zone the key may change.
        let id = random_id();
        let mut message = wire::query(id, name, wire::TYPE_SOA)?;
        let response = self.signed(&mut message, id, name, name).await?;
        let name = name.to_ascii_lowercase();
        let zone = response.records.iter().find(|r| {
            r.rtype == wire::TYPE_SOA && (name == r.name || name.ends_with(&format!(".{}", r.name)))
        });
        match zone {
            Some(z) if response.authoritative => Ok(z.name.clone()),
            _ => Err(format!(
                "the DNS server {} is not authoritative for a zone that holds {name}: point tls.acme.dns.server at the zone's primary server",
                self.server,
            )),
        }
    }

    /// Sends a signed update and checks the server's signed answer.
    async fn update(
        &self,
        zone: &str,
        change: Change,
        name: &str,
        value: &str,
    ) -> Result<(), String> {
        let id = random_id();
        let mut message = wire::update(id, zone, &[(change, name, value)], TTL)?;
        match self.signed(&mut message, id, zone, name).await?.rcode {
            0 => Ok(()),
            rcode => Err(format!(
                "the DNS server {} did not apply the update to {zone} ({})",
                self.server,
                rcode_name(rcode)
            )),
        }
    }

    /// Signs `message` (a query or an update of `zone` at `name`), sends it, and returns the
    /// answer once its signature holds. A refusal is said with what to check; an answer to trust
    /// (NOERROR, or NXDOMAIN for a name that does not exist yet) must be signed with the key.
    async fn signed(
        &self,
        message: &mut Vec<u8>,
        id: u16,
        zone: &str,
        name: &str,
    ) -> Result<wire::Response, String> {
        let mac = wire::sign(message, self.key, now());
        let (response, answer) = self.ask(message, id).await?;
        let (server, key) = (self.server, &self.key.name);
        match (response.rcode, response.tsig_error()) {
            (_, 16) => Err(format!(
                "the DNS server {server} did not accept the signature with key `{key}` (BADSIG): check tls.acme.dns.key_secret and key_algorithm against the server's key"
            )),
            (_, 17) => Err(format!(
                "the DNS server {server} does not know the key `{key}` (BADKEY): check tls.acme.dns.key_name"
            )),
            (_, 18) => Err(format!(
                "the DNS server {server} says this machine's clock is off by more than 5 minutes (BADTIME): set the clock (NTP)"
            )),
            (0 | 3, _) => {
                response
                    .verify(&answer, self.key, &mac, now())
                    .map_err(|e| format!("{e}: its answer cannot be trusted"))?;
                Ok(response)
            }
            (5, _) => Err(format!(
                "the DNS server {server} refused a request for {zone} signed with key `{key}` (REFUSED): let the key update TXT records there, e.g. BIND's update-policy {{ grant {key} name {name} TXT; }}; or allow-update {{ key {key}; }};"
            )),
            (9, _) => Err(format!(
                "the DNS server {server} is not authoritative for {zone} (NOTAUTH): point tls.acme.dns.server at the zone's primary"
            )),
            (rcode, _) => Err(format!(
                "the DNS server {server} answered {} for {zone}",
                rcode_name(rcode)
            )),
        }
    }

    /// Whether the server answers `name`'s TXT query with `value`.
    async fn answers(&self, name: &str, value: &str) -> Result<bool, String> {
        let id = random_id();
        let (response, _) = self
            .ask(&wire::query(id, name, wire::TYPE_TXT)?, id)
            .await?;
        Ok(response
            .records
            .iter()
            .any(|r| r.rtype == wire::TYPE_TXT && r.text() == value))
    }
}

fn random_id() -> u16 {
    let b = crate::crypto::random_bytes(2);
    u16::from_be_bytes([b[0], b[1]])
}

fn now() -> u64 {
    crate::clock::now().max(0) as u64
}

fn rcode_name(rcode: u16) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        9 => "NOTAUTH".into(),
        10 => "NOTZONE".into(),
        other => format!("response code {other}"),
    }
}

#[cfg(test)]
mod tests;
