//! WebAuthn (passkeys) relying-party checks, W3C WebAuthn Level 2 §7.1 (registration) and §7.2
//! (authentication): the client data, the authenticator data, the credential public key (COSE,
//! RFC 9053) and the assertion signature. Attestation is not asked for (`"none"`), so its statement
//! is not checked: castellan trusts the person who is already signed in to choose their
//! authenticator, as most relying parties do.
//!
//! Everything here is pure and bounded: it takes bytes from the network and answers `Err` with a
//! reason for anything it does not understand.

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// COSE algorithm numbers castellan accepts, in order of preference (offered to the browser).
pub const ES256: i64 = -7;
pub const EDDSA: i64 = -8;
pub const RS256: i64 = -257;
pub const ALGORITHMS: [i64; 3] = [ES256, EDDSA, RS256];

/// What the relying party expects of a ceremony.
pub struct Expected<'a> {
    /// The challenge castellan issued, base64url.
    pub challenge: &'a str,
    /// The origin the browser must report (castellan's public origin).
    pub origin: &'a str,
    /// The relying party id (the public host).
    pub rp_id: &'a str,
}

/// A credential that passed registration.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    /// The credential id, base64url.
    pub id: String,
    /// The credential public key as the authenticator sent it (a COSE key).
    pub public_key: Vec<u8>,
    pub sign_count: u32,
}

/// Checks a registration (`navigator.credentials.create`) response.
pub fn verify_registration(
    expected: &Expected,
    client_data_json: &[u8],
    attestation_object: &[u8],
) -> Result<Registered, String> {
    check_client_data(expected, client_data_json, "webauthn.create")?;
    let attestation = Cbor::decode(attestation_object)?;
    let auth_data = attestation
        .get_text("authData")
        .and_then(Cbor::as_bytes)
        .ok_or("the attestation object has no authenticator data")?;
    let data = AuthenticatorData::parse(auth_data)?;
    data.check(expected.rp_id)?;
    let (id, public_key) = data
        .credential
        .ok_or("the authenticator data carries no credential")?;
    CoseKey::parse(&public_key)?;
    Ok(Registered {
        id: URL_SAFE_NO_PAD.encode(id),
        public_key,
        sign_count: data.sign_count,
    })
}

/// Checks an assertion (`navigator.credentials.get`) response against the stored `public_key` and
/// `stored_count`; returns the authenticator's new signature counter.
pub fn verify_assertion(
    expected: &Expected,
    public_key: &[u8],
    stored_count: u32,
    client_data_json: &[u8],
    authenticator_data: &[u8],
    signature: &[u8],
) -> Result<u32, String> {
    check_client_data(expected, client_data_json, "webauthn.get")?;
    let data = AuthenticatorData::parse(authenticator_data)?;
    data.check(expected.rp_id)?;
    let key = CoseKey::parse(public_key)?;
    let client_hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, client_data_json);
    let mut signed = authenticator_data.to_vec();
    signed.extend_from_slice(client_hash.as_ref());
    key.verify(&signed, signature)?;
    // §7.2 step 21: a counter that does not move forward means a cloned authenticator. Zero on
    // both sides is an authenticator without a counter (most synced passkeys).
    if (data.sign_count != 0 || stored_count != 0) && data.sign_count <= stored_count {
        return Err(format!(
            "the authenticator's signature counter went from {stored_count} to {}: it may have been cloned",
            data.sign_count
        ));
    }
    Ok(data.sign_count)
}

fn check_client_data(expected: &Expected, json: &[u8], kind: &str) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("the client data is not JSON: {e}"))?;
    if v["type"] != kind {
        return Err(format!("the client data is not a {kind} response"));
    }
    let challenge = v["challenge"].as_str().unwrap_or("");
    if !crate::crypto::equal(challenge, expected.challenge) {
        return Err("the challenge does not match the one castellan issued".into());
    }
    if v["origin"] != expected.origin {
        return Err(format!(
            "the response was made for {} , not for {}",
            v["origin"], expected.origin
        ));
    }
    if v["crossOrigin"] == true {
        return Err("the response was made inside a cross-origin frame".into());
    }
    Ok(())
}

/// Authenticator data (WebAuthn §6.1).
struct AuthenticatorData {
    rp_id_hash: [u8; 32],
    flags: u8,
    sign_count: u32,
    /// (credential id, COSE public key) when the attested-credential flag is set.
    credential: Option<(Vec<u8>, Vec<u8>)>,
}

const USER_PRESENT: u8 = 0x01;
const USER_VERIFIED: u8 = 0x04;
const ATTESTED_CREDENTIAL: u8 = 0x40;

impl AuthenticatorData {
    fn parse(b: &[u8]) -> Result<AuthenticatorData, String> {
        if b.len() < 37 {
            return Err("the authenticator data is too short".into());
        }
        let mut rp_id_hash = [0u8; 32];
        rp_id_hash.copy_from_slice(&b[..32]);
        let flags = b[32];
        let sign_count = u32::from_be_bytes([b[33], b[34], b[35], b[36]]);
        let credential = if flags & ATTESTED_CREDENTIAL != 0 {
            // aaguid (16) | id length (2) | id | COSE key (CBOR), then maybe extensions.
            let rest = &b[37..];
            if rest.len() < 18 {
                return Err("the attested credential data is truncated".into());
            }
            let len = u16::from_be_bytes([rest[16], rest[17]]) as usize;
            if len == 0 || len > 1023 || rest.len() < 18 + len {
                return Err("the credential id has a bad length".into());
            }
            let id = rest[18..18 + len].to_vec();
            let key_bytes = &rest[18 + len..];
            let used = Cbor::decode_prefix(key_bytes)?.1;
            Some((id, key_bytes[..used].to_vec()))
        } else {
            None
        };
        Ok(AuthenticatorData {
            rp_id_hash,
            flags,
            sign_count,
            credential,
        })
    }

    /// The response was made for this relying party, with the person present and verified
    /// (a passkey stands in for the password and the second factor, so verification is required).
    fn check(&self, rp_id: &str) -> Result<(), String> {
        let want = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, rp_id.as_bytes());
        if want.as_ref() != self.rp_id_hash {
            return Err(format!("the passkey belongs to another site, not {rp_id}"));
        }
        if self.flags & USER_PRESENT == 0 {
            return Err("the authenticator did not confirm the person was present".into());
        }
        if self.flags & USER_VERIFIED == 0 {
            return Err(
                "the authenticator did not verify the person (PIN, fingerprint or face)".into(),
            );
        }
        Ok(())
    }
}

/// A credential public key (RFC 9052 §7, RFC 9053).
enum CoseKey {
    Es256 { point: Vec<u8> },
    EdDsa { key: Vec<u8> },
    Rs256 { n: Vec<u8>, e: Vec<u8> },
}

impl CoseKey {
    fn parse(bytes: &[u8]) -> Result<CoseKey, String> {
        let map = Cbor::decode(bytes)?;
        let int = |k: i64| map.get_int(k).and_then(Cbor::as_int);
        let bytes_at = |k: i64| {
            map.get_int(k)
                .and_then(Cbor::as_bytes)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| format!("the public key lacks parameter {k}"))
        };
        let (kty, alg) = (int(1), int(3));
        match (kty, alg) {
            (Some(2), Some(ES256)) => {
                if int(-1) != Some(1) {
                    return Err("only the P-256 curve is accepted for ES256".into());
                }
                let (x, y) = (bytes_at(-2)?, bytes_at(-3)?);
                if x.len() != 32 || y.len() != 32 {
                    return Err("the P-256 key has bad coordinates".into());
                }
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Ok(CoseKey::Es256 { point })
            }
            (Some(1), Some(EDDSA)) => {
                if int(-1) != Some(6) {
                    return Err("only Ed25519 is accepted for EdDSA".into());
                }
                let key = bytes_at(-2)?;
                if key.len() != 32 {
                    return Err("the Ed25519 key has a bad length".into());
                }
                Ok(CoseKey::EdDsa { key })
            }
            (Some(3), Some(RS256)) => Ok(CoseKey::Rs256 {
                n: bytes_at(-1)?,
                e: bytes_at(-2)?,
            }),
            _ => Err(format!(
                "unsupported public key (key type {kty:?}, algorithm {alg:?}); castellan accepts ES256, EdDSA and RS256"
            )),
        }
    }

    fn verify(&self, message: &[u8], sig: &[u8]) -> Result<(), String> {
        let ok = match self {
            CoseKey::Es256 { point } => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, point)
                    .verify(message, sig)
                    .is_ok()
            }
            CoseKey::EdDsa { key } => UnparsedPublicKey::new(&signature::ED25519, key)
                .verify(message, sig)
                .is_ok(),
            CoseKey::Rs256 { n, e } => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok(),
        };
        ok.then_some(())
            .ok_or_else(|| "the signature does not verify with the registered key".into())
    }
}

/// The part of CBOR (RFC 8949) that WebAuthn uses: definite lengths, integers, byte and text
/// strings, arrays, maps and simple values. Nesting and sizes are bounded.
#[derive(Debug, Clone, PartialEq)]
pub enum Cbor {
    Int(i128),
    Bytes(Vec<u8>),
    Text(String),
    Array(Vec<Cbor>),
    Map(Vec<(Cbor, Cbor)>),
    Simple(u8),
}

const MAX_DEPTH: usize = 16;

impl Cbor {
    /// Decodes one item that must fill `b` exactly.
    pub fn decode(b: &[u8]) -> Result<Cbor, String> {
        let (v, used) = Cbor::decode_prefix(b)?;
        if used != b.len() {
            return Err("trailing bytes after the CBOR item".into());
        }
        Ok(v)
    }

    /// Decodes the item at the start of `b`; returns it and the bytes it took.
    pub fn decode_prefix(b: &[u8]) -> Result<(Cbor, usize), String> {
        let mut pos = 0;
        let v = item(b, &mut pos, 0)?;
        Ok((v, pos))
    }

    fn get(&self, key: &Cbor) -> Option<&Cbor> {
        match self {
            Cbor::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn get_int(&self, key: i64) -> Option<&Cbor> {
        self.get(&Cbor::Int(key.into()))
    }

    fn get_text(&self, key: &str) -> Option<&Cbor> {
        self.get(&Cbor::Text(key.into()))
    }

    fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Cbor::Bytes(b) => Some(b),
            _ => None,
        }
    }

    fn as_int(&self) -> Option<i64> {
        match self {
            Cbor::Int(i) => i64::try_from(*i).ok(),
            _ => None,
        }
    }
}

fn item(b: &[u8], pos: &mut usize, depth: usize) -> Result<Cbor, String> {
    if depth > MAX_DEPTH {
        return Err("CBOR nested too deeply".into());
    }
    let first = *b.get(*pos).ok_or("CBOR ended early")?;
    *pos += 1;
    let (major, info) = (first >> 5, first & 0x1f);
    let arg: u64 = match info {
        0..=23 => info.into(),
        24..=27 => {
            let n = 1usize << (info - 24);
            let bytes = b.get(*pos..*pos + n).ok_or("CBOR ended early")?;
            *pos += n;
            bytes.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x))
        }
        _ => return Err("indefinite-length or reserved CBOR is not accepted".into()),
    };
    // Lengths are bounded by the input, so a hostile length cannot make us allocate.
    let len = |n: u64| -> Result<usize, String> {
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= b.len() - *pos)
            .ok_or_else(|| "a CBOR length runs past the end".to_string())
    };
    Ok(match major {
        0 => Cbor::Int(arg.into()),
        1 => Cbor::Int(-1 - i128::from(arg)),
        2 | 3 => {
            let n = len(arg)?;
            let s = b[*pos..*pos + n].to_vec();
            *pos += n;
            if major == 2 {
                Cbor::Bytes(s)
            } else {
                Cbor::Text(String::from_utf8(s).map_err(|_| "CBOR text is not UTF-8")?)
            }
        }
        4 => {
            let n = len(arg)?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(item(b, pos, depth + 1)?);
            }
            Cbor::Array(v)
        }
        5 => {
            let n = len(arg)?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let k = item(b, pos, depth + 1)?;
                let val = item(b, pos, depth + 1)?;
                v.push((k, val));
            }
            Cbor::Map(v)
        }
        6 => return Err("CBOR tags are not accepted".into()),
        _ => match info {
            0..=24 => Cbor::Simple(u8::try_from(arg).unwrap_or(u8::MAX)),
            _ => return Err("CBOR floats are not accepted".into()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

    /// A software authenticator: an ES256 key and what it would send.
    struct Authenticator {
        key: EcdsaKeyPair,
        count: u32,
    }

    fn enc_head(major: u8, n: u64, out: &mut Vec<u8>) {
        let m = major << 5;
        match n {
            0..=23 => out.push(m | n as u8),
            24..=0xff => out.extend([m | 24, n as u8]),
            0x100..=0xffff => {
                out.push(m | 25);
                out.extend((n as u16).to_be_bytes());
            }
            _ => {
                out.push(m | 26);
                out.extend((n as u32).to_be_bytes());
            }
        }
    }

    fn enc(v: &Cbor, out: &mut Vec<u8>) {
        match v {
            Cbor::Int(i) if *i >= 0 => enc_head(0, *i as u64, out),
            Cbor::Int(i) => enc_head(1, (-1 - *i) as u64, out),
            Cbor::Bytes(b) => {
                enc_head(2, b.len() as u64, out);
                out.extend(b);
            }
            Cbor::Text(t) => {
                enc_head(3, t.len() as u64, out);
                out.extend(t.as_bytes());
            }
            Cbor::Array(a) => {
                enc_head(4, a.len() as u64, out);
                a.iter().for_each(|x| enc(x, out));
            }
            Cbor::Map(m) => {
                enc_head(5, m.len() as u64, out);
                for (k, x) in m {
                    enc(k, out);
                    enc(x, out);
                }
            }
            Cbor::Simple(s) => enc_head(7, (*s).into(), out),
        }
    }

    fn cbor(v: &Cbor) -> Vec<u8> {
        let mut out = Vec::new();
        enc(v, &mut out);
        out
    }

    impl Authenticator {
        fn new() -> Authenticator {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
            Authenticator {
                key: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
                    .unwrap(),
                count: 0,
            }
        }

        fn cose_key(&self) -> Vec<u8> {
            let p = self.key.public_key().as_ref();
            cbor(&Cbor::Map(vec![
                (Cbor::Int(1), Cbor::Int(2)),
                (Cbor::Int(3), Cbor::Int(-7)),
                (Cbor::Int(-1), Cbor::Int(1)),
                (Cbor::Int(-2), Cbor::Bytes(p[1..33].to_vec())),
                (Cbor::Int(-3), Cbor::Bytes(p[33..65].to_vec())),
            ]))
        }

        fn auth_data(&self, rp: &str, flags: u8, credential: bool) -> Vec<u8> {
            let mut d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, rp.as_bytes())
                .as_ref()
                .to_vec();
            d.push(flags | if credential { ATTESTED_CREDENTIAL } else { 0 });
            d.extend(self.count.to_be_bytes());
            if credential {
                d.extend([0u8; 16]);
                d.extend(4u16.to_be_bytes());
                d.extend(b"cred");
                d.extend(self.cose_key());
            }
            d
        }

        fn register(
            &self,
            challenge: &str,
            origin: &str,
            rp: &str,
            flags: u8,
        ) -> (Vec<u8>, Vec<u8>) {
            let client = serde_json::json!({"type": "webauthn.create", "challenge": challenge, "origin": origin})
                .to_string()
                .into_bytes();
            let att = cbor(&Cbor::Map(vec![
                (Cbor::Text("fmt".into()), Cbor::Text("none".into())),
                (Cbor::Text("attStmt".into()), Cbor::Map(vec![])),
                (
                    Cbor::Text("authData".into()),
                    Cbor::Bytes(self.auth_data(rp, flags, true)),
                ),
            ]));
            (client, att)
        }

        fn assert(
            &mut self,
            challenge: &str,
            origin: &str,
            rp: &str,
            flags: u8,
        ) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
            self.count += 1;
            let client = serde_json::json!({"type": "webauthn.get", "challenge": challenge, "origin": origin})
                .to_string()
                .into_bytes();
            let data = self.auth_data(rp, flags, false);
            let mut signed = data.clone();
            signed.extend(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &client).as_ref());
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let sig = self.key.sign(&rng, &signed).unwrap().as_ref().to_vec();
            (client, data, sig)
        }
    }

    const ORIGIN: &str = "https://login.example.com";
    const RP: &str = "login.example.com";

    fn expected(challenge: &str) -> Expected<'_> {
        Expected {
            challenge,
            origin: ORIGIN,
            rp_id: RP,
        }
    }

    #[test]
    fn registration_then_assertion_and_what_each_refuses() {
        let mut a = Authenticator::new();
        let both = USER_PRESENT | USER_VERIFIED;
        let (client, att) = a.register("c1", ORIGIN, RP, both);
        let reg = verify_registration(&expected("c1"), &client, &att).unwrap();
        assert_eq!(reg.id, URL_SAFE_NO_PAD.encode(b"cred"));
        assert_eq!(reg.public_key, a.cose_key());

        // Registration refusals: wrong challenge, origin, relying party, no verification.
        assert!(verify_registration(&expected("c2"), &client, &att).is_err());
        let (c, t) = a.register("c1", "https://evil.example", RP, both);
        assert!(
            verify_registration(&expected("c1"), &c, &t)
                .unwrap_err()
                .contains("made for")
        );
        let (c, t) = a.register("c1", ORIGIN, "evil.example", both);
        assert!(
            verify_registration(&expected("c1"), &c, &t)
                .unwrap_err()
                .contains("another site")
        );
        let (c, t) = a.register("c1", ORIGIN, RP, USER_PRESENT);
        assert!(
            verify_registration(&expected("c1"), &c, &t)
                .unwrap_err()
                .contains("verify")
        );

        let (client, data, sig) = a.assert("c3", ORIGIN, RP, both);
        let count =
            verify_assertion(&expected("c3"), &reg.public_key, 0, &client, &data, &sig).unwrap();
        assert_eq!(count, 1);
        // Replayed with the counter already at 1: a clone, refused.
        assert!(
            verify_assertion(&expected("c3"), &reg.public_key, 1, &client, &data, &sig)
                .unwrap_err()
                .contains("cloned")
        );
        // A flipped bit anywhere signed fails.
        let mut bad = data.clone();
        bad[33] ^= 1;
        assert!(
            verify_assertion(&expected("c3"), &reg.public_key, 0, &client, &bad, &sig).is_err()
        );
        let mut bad_sig = sig.clone();
        let last = bad_sig.len() - 1;
        bad_sig[last] ^= 1;
        assert!(
            verify_assertion(
                &expected("c3"),
                &reg.public_key,
                0,
                &client,
                &data,
                &bad_sig
            )
            .is_err()
        );
        // Another key does not verify it.
        let other = Authenticator::new();
        assert!(
            verify_assertion(&expected("c3"), &other.cose_key(), 0, &client, &data, &sig).is_err()
        );
        // A registration response cannot be used to sign in.
        let (c, _) = a.register("c3", ORIGIN, RP, both);
        assert!(verify_assertion(&expected("c3"), &reg.public_key, 0, &c, &data, &sig).is_err());
    }

    #[test]
    fn cbor_refuses_what_it_does_not_understand_without_panicking() {
        assert_eq!(Cbor::decode(&[0x18, 0x2a]).unwrap(), Cbor::Int(42));
        assert_eq!(Cbor::decode(&[0x38, 0x63]).unwrap(), Cbor::Int(-100));
        assert!(Cbor::decode(&[0x5f]).is_err(), "indefinite length");
        assert!(Cbor::decode(&[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(Cbor::decode(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(Cbor::decode(&[0x81; 64]).is_err(), "nesting");
        assert!(Cbor::decode(&[0x01, 0x02]).is_err(), "trailing");
        assert!(Cbor::decode(&[0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_ok());
        assert!(Cbor::decode(&[0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_ok());
        assert!(CoseKey::parse(&[0xa0]).is_err());
    }
}
