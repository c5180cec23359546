//! DNS messages as DNS-01 needs them: a query (RFC 1035), a dynamic update that adds or deletes
//! one TXT record (RFC 2136), and TSIG signatures on both directions (RFC 8945). Names are written
//! in lower case and never compressed; answers may use compression.

use aws_lc_rs::{constant_time, hmac};

use crate::config::{TsigAlgorithm, TsigKey as Key};

pub const TYPE_SOA: u16 = 6;
pub const TYPE_TXT: u16 = 16;
const TYPE_TSIG: u16 = 250;
const CLASS_IN: u16 = 1;
const CLASS_NONE: u16 = 254;
const CLASS_ANY: u16 = 255;
const OPCODE_UPDATE: u16 = 5;
/// How far apart two clocks may be for a TSIG signature to count (RFC 8945 recommends 300 s).
const FUDGE: u16 = 300;

fn hmac_of(algorithm: TsigAlgorithm) -> hmac::Algorithm {
    match algorithm {
        TsigAlgorithm::HmacSha256 => hmac::HMAC_SHA256,
        TsigAlgorithm::HmacSha384 => hmac::HMAC_SHA384,
        TsigAlgorithm::HmacSha512 => hmac::HMAC_SHA512,
    }
}

/// One change in an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Adds the record beside any others of the name (RFC 2136 §2.5.1).
    Add,
    /// Deletes exactly this record, leaving others of the name (RFC 2136 §2.5.4).
    Delete,
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// A name as labels, lower case (also TSIG's canonical form).
fn put_name(out: &mut Vec<u8>, name: &str) -> Result<(), String> {
    let name = name.trim_end_matches('.');
    let start = out.len();
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(format!(
                    "`{name}` is not a DNS name (empty or over-long label)"
                ));
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    if out.len() - start > 255 {
        return Err(format!("`{name}` is longer than a DNS name may be"));
    }
    Ok(())
}

fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    put_u16(&mut out, id);
    put_u16(&mut out, flags);
    for c in counts {
        put_u16(&mut out, c);
    }
    out
}

/// A question for `name`'s records of `rtype`, without recursion.
pub fn query(id: u16, name: &str, rtype: u16) -> Result<Vec<u8>, String> {
    let mut out = header(id, 0, [1, 0, 0, 0]);
    put_name(&mut out, name)?;
    put_u16(&mut out, rtype);
    put_u16(&mut out, CLASS_IN);
    Ok(out)
}

/// An update of `zone` that adds or deletes TXT records (`(change, owner, text)`).
pub fn update(
    id: u16,
    zone: &str,
    changes: &[(Change, &str, &str)],
    ttl: u32,
) -> Result<Vec<u8>, String> {
    let mut out = header(id, OPCODE_UPDATE << 11, [1, 0, changes.len() as u16, 0]);
    put_name(&mut out, zone)?;
    put_u16(&mut out, TYPE_SOA);
    put_u16(&mut out, CLASS_IN);
    for (change, owner, text) in changes {
        if text.len() > 255 {
            return Err("a TXT string is at most 255 bytes".into());
        }
        put_name(&mut out, owner)?;
        put_u16(&mut out, TYPE_TXT);
        let (class, ttl) = match change {
            Change::Add => (CLASS_IN, ttl),
            Change::Delete => (CLASS_NONE, 0),
        };
        put_u16(&mut out, class);
        put_u32(&mut out, ttl);
        put_u16(&mut out, text.len() as u16 + 1);
        out.push(text.len() as u8);
        out.extend_from_slice(text.as_bytes());
    }
    Ok(out)
}

/// TSIG's variables after the message in the signed data (RFC 8945 §4.3.3).
fn tsig_variables(out: &mut Vec<u8>, key: &Key, time: u64, error: u16, other: &[u8]) {
    put_name(out, &key.name).expect("key names are checked when the configuration is read");
    put_u16(out, CLASS_ANY);
    put_u32(out, 0);
    put_name(out, key.algorithm.name()).expect("a fixed name");
    out.extend_from_slice(&time.to_be_bytes()[2..]);
    put_u16(out, FUDGE);
    put_u16(out, error);
    put_u16(out, other.len() as u16);
    out.extend_from_slice(other);
}

/// Signs `message` with `key` at `time` (seconds since 1970): appends the TSIG record and
/// returns its MAC, which the answer's signature covers.
pub fn sign(message: &mut Vec<u8>, key: &Key, time: u64) -> Vec<u8> {
    sign_after(message, key, time, None)
}

/// Signs `message`; an answer's signature also covers the request's MAC (`request_mac`).
pub(super) fn sign_after(
    message: &mut Vec<u8>,
    key: &Key,
    time: u64,
    request_mac: Option<&[u8]>,
) -> Vec<u8> {
    let mut signed = Vec::with_capacity(message.len() + 128);
    if let Some(m) = request_mac {
        put_u16(&mut signed, m.len() as u16);
        signed.extend_from_slice(m);
    }
    signed.extend_from_slice(message);
    tsig_variables(&mut signed, key, time, 0, &[]);
    let mac = hmac::sign(
        &hmac::Key::new(hmac_of(key.algorithm), &key.secret),
        &signed,
    )
    .as_ref()
    .to_vec();
    let id = [message[0], message[1]];
    put_name(message, &key.name).expect("checked key name");
    put_u16(message, TYPE_TSIG);
    put_u16(message, CLASS_ANY);
    put_u32(message, 0);
    let mut rdata = Vec::new();
    put_name(&mut rdata, key.algorithm.name()).expect("a fixed name");
    rdata.extend_from_slice(&time.to_be_bytes()[2..]);
    put_u16(&mut rdata, FUDGE);
    put_u16(&mut rdata, mac.len() as u16);
    rdata.extend_from_slice(&mac);
    rdata.extend_from_slice(&id);
    put_u16(&mut rdata, 0);
    put_u16(&mut rdata, 0);
    put_u16(message, rdata.len() as u16);
    message.extend_from_slice(&rdata);
    let arcount = u16::from_be_bytes([message[10], message[11]]) + 1;
    message[10..12].copy_from_slice(&arcount.to_be_bytes());
    mac
}

/// One record of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub rtype: u16,
    pub data: Vec<u8>,
}

impl Record {
    /// A TXT record's text (its character strings joined, as ACME validators read them).
    pub fn text(&self) -> String {
        let mut out = Vec::new();
        let mut rest = self.data.as_slice();
        while let Some((&len, after)) = rest.split_first() {
            let len = (len as usize).min(after.len());
            out.extend_from_slice(&after[..len]);
            rest = &after[len..];
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The TSIG record that ends an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tsig {
    /// Where it starts in the message: what comes before is what it signs.
    start: usize,
    algorithm: String,
    time: u64,
    mac: Vec<u8>,
    original_id: u16,
    error: u16,
    other: Vec<u8>,
}

/// An answer: its response code, whether the server is authoritative, and its records (answer,
/// authority and additional sections, in order; the TSIG record apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    pub rcode: u16,
    pub authoritative: bool,
    pub records: Vec<Record>,
    tsig: Option<Tsig>,
}

struct Reader<'a> {
    message: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.message.len());
        let end = end.ok_or("the DNS answer is cut short")?;
        let out = &self.message[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A name, following compression pointers (each must point backwards, so none can loop).
    fn name(&mut self) -> Result<String, String> {
        let mut labels: Vec<String> = Vec::new();
        let mut at = self.at;
        let mut resume = None;
        loop {
            let len = *self.message.get(at).ok_or("the DNS answer is cut short")? as usize;
            match len & 0xC0 {
                0x00 if len == 0 => {
                    at += 1;
                    break;
                }
                0x00 => {
                    let label = self
                        .message
                        .get(at + 1..at + 1 + len)
                        .ok_or("the DNS answer is cut short")?;
                    labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
                    at += 1 + len;
                }
                0xC0 => {
                    let low = *self
                        .message
                        .get(at + 1)
                        .ok_or("the DNS answer is cut short")?;
                    let target = ((len & 0x3F) << 8) | low as usize;
                    if target >= at {
                        return Err("the DNS answer has a name pointing forwards".into());
                    }
                    resume.get_or_insert(at + 2);
                    at = target;
                }
                _ => return Err("the DNS answer has an unknown label type".into()),
            }
        }
        self.at = resume.unwrap_or(at);
        Ok(labels.join("."))
    }
}

/// Reads an answer.
pub fn parse(message: &[u8]) -> Result<Response, String> {
    let mut r = Reader { message, at: 0 };
    let id = r.u16()?;
    let flags = r.u16()?;
    let counts = [r.u16()?, r.u16()?, r.u16()?, r.u16()?];
    for _ in 0..counts[0] {
        r.name()?;
        r.take(4)?;
    }
    let total = counts[1] as usize + counts[2] as usize + counts[3] as usize;
    let mut records = Vec::new();
    let mut tsig = None;
    for i in 0..total {
        let start = r.at;
        let name = r.name()?;
        let rtype = r.u16()?;
        let _class = r.u16()?;
        let _ttl = r.u32()?;
        let len = r.u16()? as usize;
        let data_at = r.at;
        let data = r.take(len)?.to_vec();
        if rtype == TYPE_TSIG {
            if i + 1 != total {
                return Err("the DNS answer has a TSIG record that is not the last one".into());
            }
            let mut d = Reader {
                message,
                at: data_at,
            };
            let algorithm = d.name()?;
            let time = d.take(6)?.iter().fold(0u64, |t, b| t << 8 | *b as u64);
            let _fudge = d.u16()?;
            let mac_len = d.u16()? as usize;
            let mac = d.take(mac_len)?.to_vec();
            let original_id = d.u16()?;
            let error = d.u16()?;
            let other_len = d.u16()? as usize;
            let other = d.take(other_len)?.to_vec();
            tsig = Some(Tsig {
                start,
                algorithm,
                time,
                mac,
                original_id,
                error,
                other,
            });
        } else {
            records.push(Record { name, rtype, data });
        }
    }
    Ok(Response {
        id,
        rcode: flags & 0x000F,
        authoritative: flags & 0x0400 != 0,
        records,
        tsig,
    })
}

impl Response {
    /// The TSIG error the server reported (RFC 8945 §4.3: BADSIG 16, BADKEY 17, BADTIME 18).
    pub fn tsig_error(&self) -> u16 {
        self.tsig.as_ref().map_or(0, |t| t.error)
    }

    /// Checks the answer's signature: made with `key`, over `request_mac` and the answer, within
    /// the allowed clock difference of `now`. An unsigned or wrongly signed answer is an error.
    pub fn verify(
        &self,
        message: &[u8],
        key: &Key,
        request_mac: &[u8],
        now: u64,
    ) -> Result<(), String> {
        let t = self
            .tsig
            .as_ref()
            .ok_or("the DNS server's answer is not signed")?;
        if TsigAlgorithm::parse(&t.algorithm) != Some(key.algorithm) {
            return Err(format!(
                "the DNS server's answer is signed with {}, not {}",
                t.algorithm,
                key.algorithm.name()
            ));
        }
        let mut signed = Vec::with_capacity(message.len() + 128);
        put_u16(&mut signed, request_mac.len() as u16);
        signed.extend_from_slice(request_mac);
        let mut body = message[..t.start].to_vec();
        body[0..2].copy_from_slice(&t.original_id.to_be_bytes());
        let arcount = u16::from_be_bytes([body[10], body[11]]).saturating_sub(1);
        body[10..12].copy_from_slice(&arcount.to_be_bytes());
        signed.extend_from_slice(&body);
        tsig_variables(&mut signed, key, t.time, t.error, &t.other);
        let expected = hmac::sign(
            &hmac::Key::new(hmac_of(key.algorithm), &key.secret),
            &signed,
        );
        if constant_time::verify_slices_are_equal(expected.as_ref(), &t.mac).is_err() {
            return Err("the DNS server's answer has a wrong signature".into());
        }
        if now.abs_diff(t.time) > FUDGE as u64 {
            return Err(format!(
                "the DNS server's clock is {} s away from this machine's",
                now.abs_diff(t.time)
            ));
        }
        Ok(())
    }
}
