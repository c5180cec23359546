//! Audit streaming: every record of the audit trail (decisions and changes) delivered, in order, at
//! least once, to each `[[audit_sinks]]` entry: a webhook (JSON batches, signed), syslog (RFC 5424
//! over TCP or TLS) or a JSON-lines file (rotated by size). The store's trail is the spool: each sink keeps a cursor (the id of the
//! last record it delivered) and reads on from it, so a sink that is down never holds up a request
//! and loses nothing; it falls behind (`castellan_audit_sink_backlog`) and catches up when it is
//! back. One replica at a time delivers for a sink (a lease in the store). Records are read once
//! they are [`SETTLE`] old, so one whose write committed late is not skipped, and a batch ends at
//! the first record that is not (ids and times are not in the same order: see
//! [`crate::store::Store::audit_after`]).

use std::io::Write;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::State;
use super::metrics::SinkLabel;
use crate::config::{AuditSink, AuditSinkKind};
use crate::store::AuditRecord;

/// How old a record must be before a sink reads it.
pub const SETTLE: Duration = Duration::from_secs(2);
/// How often a sink that has caught up looks again.
const POLL: Duration = Duration::from_secs(1);
/// The longest wait between two attempts at a sink that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The header that carries a webhook batch's signature: `sha256=` and the hex HMAC-SHA256 of the
/// body under the sink's `secret`.
pub const SIGNATURE_HEADER: &str = "x-castellan-signature";

/// A syslog connection, kept from one delivery to the next.
type Conn = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// Delivers the trail to `sink` while `state` (the configuration that names it) is in use.
pub async fn run(state: Weak<State>, sink: AuditSink) {
    let holder = crate::crypto::random_token(16);
    let lease = format!("audit-sink:{}", sink.id);
    let mut backoff = Duration::from_secs(1);
    let mut down_since: Option<std::time::Instant> = None;
    let mut conn: Option<Conn> = None;
    loop {
        let Some(state) = state.upgrade() else {
            return;
        };
        let wait = match deliver_once(&state, &sink, &holder, &lease, &mut conn).await {
            Ok(0) => POLL,
            Ok(_) => {
                if let Some(t) = down_since.take() {
                    tracing::info!(sink = %sink.id, "audit sink delivers again (it was failing for {} s)", t.elapsed().as_secs());
                }
                backoff = Duration::from_secs(1);
                Duration::ZERO
            }
            Err(e) => {
                if down_since.is_none() {
                    tracing::warn!(sink = %sink.id, "audit sink failed: {e}; records wait in the audit trail and are delivered when it is back");
                    down_since = Some(std::time::Instant::now());
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                backoff / 2
            }
        };
        drop(state);
        tokio::time::sleep(wait).await;
    }
}

/// One round: the next batch after the sink's cursor, delivered, and the cursor moved past it.
/// Returns how many records were delivered.
async fn deliver_once(
    state: &Arc<State>,
    sink: &AuditSink,
    holder: &str,
    lease: &str,
    conn: &mut Option<Conn>,
) -> Result<usize, String> {
    let store = &state.store;
    if !store
        .take_lease(lease, holder, 30)
        .await
        .map_err(|e| e.to_string())?
    {
        return Ok(0);
    }
    let cursor = store
        .audit_cursor(&sink.id)
        .await
        .map_err(|e| e.to_string())?;
    let backlog = store
        .audit_backlog(cursor)
        .await
        .map_err(|e| e.to_string())?;
    state
        .metrics
        .audit_sink_backlog
        .get_or_create(&SinkLabel {
            sink: sink.id.clone(),
        })
        .set(backlog);
    let settled = crate::clock::now_ms() - SETTLE.as_millis() as i64;
    let batch = store
        .audit_after(cursor, settled, sink.batch as i64)
        .await
        .map_err(|e| e.to_string())?;
    let Some(last) = batch.last().map(|r| r.id) else {
        return Ok(0);
    };
    match &sink.kind {
        AuditSinkKind::Webhook { url, secret } => {
            webhook(
                &state.http,
                url,
                secret.as_ref().map(|s| s.0.as_str()),
                &batch,
            )
            .await?
        }
        AuditSinkKind::File {
            path,
            max_size,
            keep,
        } => {
            let (path, max_size, keep) = (path.clone(), *max_size, *keep);
            tokio::task::spawn_blocking(move || append(&path, max_size, keep, &batch))
                .await
                .map_err(|e| e.to_string())??
        }
        AuditSinkKind::Syslog { address, ca } => {
            syslog(conn, address, ca.as_deref(), &batch).await?
        }
    }
    store
        .set_audit_cursor(&sink.id, last)
        .await
        .map_err(|e| e.to_string())?;
    Ok((last - cursor) as usize)
}

/// POSTs `{"records": [...]}`; any 2xx is delivered.
async fn webhook(
    http: &reqwest::Client,
    url: &url::Url,
    secret: Option<&str>,
    batch: &[AuditRecord],
) -> Result<(), String> {
    let body =
        serde_json::to_vec(&serde_json::json!({ "records": batch })).map_err(|e| e.to_string())?;
    let mut req = http
        .post(url.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .timeout(Duration::from_secs(10));
    if let Some(secret) = secret {
        req = req.header(SIGNATURE_HEADER, signature(secret, &body));
    }
    match req.body(body).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("{url} answered {}", r.status())),
        Err(e) => Err(format!("{url}: {e}")),
    }
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mac = crate::crypto::mac_bytes(secret.as_bytes(), body);
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Writes the batch as RFC 5424 messages, octet-counted (RFC 6587), on the sink's connection
/// (made, or made again after a failure). Plain syslog has no acknowledgement: a record is
/// delivered once the connection took it.
async fn syslog(
    conn: &mut Option<Conn>,
    address: &url::Url,
    ca: Option<&std::path::Path>,
    batch: &[AuditRecord],
) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let stream = match conn {
        Some(c) => c,
        None => conn.insert(connect(address, ca).await?),
    };
    let host = hostname();
    let mut bytes = Vec::new();
    for r in batch {
        let message = rfc5424(r, &host);
        bytes.extend_from_slice(format!("{} ", message.len()).as_bytes());
        bytes.extend_from_slice(message.as_bytes());
    }
    let written = async {
        stream.write_all(&bytes).await?;
        stream.flush().await
    }
    .await;
    if let Err(e) = written {
        *conn = None;
        return Err(format!("{address}: {e}"));
    }
    Ok(())
}

/// A connection to a syslog receiver: TCP, or TLS verified against `ca` (else the system's
/// roots) for `tls://`.
async fn connect(address: &url::Url, ca: Option<&std::path::Path>) -> Result<Conn, String> {
    let host = address.host_str().unwrap_or_default().to_string();
    let port = address.port().unwrap_or(6514);
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| format!("{address}: no connection within 10 s"))?
    .map_err(|e| format!("{address}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if address.scheme() != "tls" {
        return Ok(Box::new(tcp));
    }
    let builder = rustls::ClientConfig::builder();
    let builder = match ca {
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                roots
                    .add(cert.map_err(|e| format!("{}: {e}", path.display()))?)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots)
        }
        None => {
            use hyper_rustls::ConfigBuilderExt;
            builder
                .with_native_roots()
                .map_err(|e| format!("the system's CA certificates: {e}"))?
        }
    };
    let config = Arc::new(builder.with_no_client_auth());
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| format!("{address}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{address}: TLS: {e}"))?;
    Ok(Box::new(tls))
}

/// This machine's name for syslog's HOSTNAME field (`-` when it has none that fits).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "-".into())
}

/// One record as an RFC 5424 message: facility authpriv, severity informational; MSGID the
/// record's kind; structured data `castellan@32473` (the enterprise number RFC 5612 sets aside for
/// documentation) with its id, app, actor, action and reference; the record as JSON for MSG.
pub fn rfc5424(r: &AuditRecord, host: &str) -> String {
    let sd = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace(']', "\\]")
    };
    let millis = r.at.rem_euclid(1000);
    let ts =
        crate::clock::format_rfc3339(r.at.div_euclid(1000)).replace('Z', &format!(".{millis:03}Z"));
    let msgid: String = r
        .kind
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect();
    format!(
        "<86>1 {ts} {host} castellan - {} [castellan@32473 id=\"{}\" app=\"{}\" actor=\"{}\" action=\"{}\" reference=\"{}\"] {}",
        if msgid.is_empty() {
            "-".to_string()
        } else {
            msgid
        },
        r.id,
        sd(&r.app),
        sd(&r.actor),
        sd(&r.action),
        sd(&r.reference),
        serde_json::to_string(r).unwrap_or_default()
    )
}

/// Appends one JSON line per record to `path` (synced before the cursor moves), first rotating
/// it when this batch would take it past `max_size`: `path.1` is the newest old file, and at most
/// `keep` are kept.
fn append(
    path: &std::path::Path,
    max_size: u64,
    keep: usize,
    batch: &[AuditRecord],
) -> Result<(), String> {
    let mut lines = Vec::new();
    for r in batch {
        serde_json::to_writer(&mut lines, r).map_err(|e| e.to_string())?;
        lines.push(b'\n');
    }
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size > 0 && size + lines.len() as u64 > max_size {
        let numbered = |n: usize| {
            let mut p = path.as_os_str().to_owned();
            p.push(format!(".{n}"));
            std::path::PathBuf::from(p)
        };
        let _ = std::fs::remove_file(numbered(keep));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if keep > 0 {
            std::fs::rename(path, numbered(1))
                .map_err(|e| format!("rotating {}: {e}", path.display()))?;
        } else {
            std::fs::remove_file(path).map_err(|e| format!("rotating {}: {e}", path.display()))?;
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    file.write_all(&lines)
        .and_then(|()| file.sync_data())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: i64) -> AuditRecord {
        AuditRecord {
            id,
            kind: "decision".into(),
            path: format!("/r/{id}").into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_file_is_rotated_by_size_and_keeps_what_it_is_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let one = serde_json::to_vec(&record(1)).unwrap().len() as u64 + 1;
        // Room for two records a file.
        for id in 1..=7 {
            append(&path, one * 2, 2, &[record(id)]).unwrap();
        }
        let ids = |p: &std::path::Path| -> Vec<i64> {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<AuditRecord>(l).unwrap().id)
                .collect()
        };
        assert_eq!(ids(&path), [7]);
        assert_eq!(ids(&dir.path().join("audit.jsonl.1")), [5, 6]);
        assert_eq!(ids(&dir.path().join("audit.jsonl.2")), [3, 4]);
        assert!(!dir.path().join("audit.jsonl.3").exists(), "keep = 2");
    }

    #[test]
    fn a_record_is_an_rfc_5424_message_with_escaped_structured_data() {
        let r = AuditRecord {
            id: 7,
            at: 1_796_544_000_123,
            kind: "decision".into(),
            actor: "eve\"] x@example.com".into(),
            app: "demo".into(),
            action: "deny".into(),
            ..Default::default()
        };
        let m = rfc5424(&r, "gw1");
        assert!(
            m.starts_with("<86>1 2026-12-06T08:00:00.123Z gw1 castellan - decision [castellan@32473 id=\"7\" app=\"demo\" actor=\"eve\\\"\\] x@example.com\" action=\"deny\" reference=\"\"] {"),
            "{m}"
        );
        let json = &m[m.find("] {").unwrap() + 2..];
        assert_eq!(serde_json::from_str::<AuditRecord>(json).unwrap(), r);
    }

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
