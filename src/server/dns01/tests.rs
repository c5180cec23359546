use super::wire::{self, Change};
use crate::config::{TsigAlgorithm, TsigKey};

fn key(secret: &[u8]) -> TsigKey {
    TsigKey {
        name: "castellan".into(),
        algorithm: TsigAlgorithm::HmacSha256,
        secret: secret.to_vec(),
    }
}

/// The server's side: the request turned into its answer (QR set, TSIG removed), signed over the
/// request's MAC, as RFC 8945 §5.3 has a server do.
fn answer_to(request: &[u8], unsigned_len: usize, key: &TsigKey, mac: &[u8], time: u64) -> Vec<u8> {
    let mut answer = request[..unsigned_len].to_vec();
    answer[2] |= 0x80;
    answer[10..12].copy_from_slice(&[0, 0]);
    wire::sign_after(&mut answer, key, time, Some(mac));
    answer
}

#[test]
fn an_update_adds_and_deletes_exactly_one_txt_record_each() {
    let m = wire::update(
        0x1234,
        "Example.COM.",
        &[
            (Change::Add, "_acme-challenge.example.com", "abc"),
            (Change::Delete, "_acme-challenge.example.com", "old"),
        ],
        60,
    )
    .unwrap();
    assert_eq!(&m[0..2], &[0x12, 0x34]);
    assert_eq!(m[2] >> 3 & 0x0F, 5, "opcode UPDATE");
    assert_eq!(
        &m[4..12],
        &[0, 1, 0, 0, 0, 2, 0, 0],
        "zone, no prerequisites, two updates"
    );
    let zone = b"\x07example\x03com\x00\x00\x06\x00\x01";
    assert_eq!(&m[12..12 + zone.len()], zone, "zone section, lower case");
    let owner = b"\x0f_acme-challenge\x07example\x03com\x00";
    let add = [
        &owner[..],
        b"\x00\x10\x00\x01\x00\x00\x00\x3c\x00\x04\x03abc",
    ]
    .concat();
    let delete = [
        &owner[..],
        b"\x00\x10\x00\xfe\x00\x00\x00\x00\x00\x04\x03old",
    ]
    .concat();
    assert_eq!(&m[12 + zone.len()..], [add, delete].concat().as_slice());
    assert!(wire::update(1, "example.com", &[(Change::Add, "a..b", "x")], 60).is_err());
    assert!(wire::update(1, &"a".repeat(64), &[], 60).is_err());
}

#[test]
fn a_signed_answer_is_verified_and_any_change_to_it_is_refused() {
    let key = key(b"0123456789abcdef0123456789abcdef");
    let mut request = wire::update(
        7,
        "example.com",
        &[(Change::Add, "_acme-challenge.example.com", "v")],
        60,
    )
    .unwrap();
    let unsigned = request.len();
    let mac = wire::sign(&mut request, &key, 1_000_000);
    assert_eq!(mac.len(), 32);
    assert_eq!(&request[10..12], &[0, 1], "the TSIG record is counted");
    let answer = answer_to(&request, unsigned, &key, &mac, 1_000_010);
    let parsed = wire::parse(&answer).unwrap();
    assert_eq!((parsed.id, parsed.rcode, parsed.tsig_error()), (7, 0, 0));
    parsed.verify(&answer, &key, &mac, 1_000_000).unwrap();

    // A flipped bit in the answer, another key, another request, or a clock too far away.
    let mut forged = answer.clone();
    forged[3] ^= 0x01;
    let f = wire::parse(&forged).unwrap();
    assert!(
        f.verify(&forged, &key, &mac, 1_000_000)
            .unwrap_err()
            .contains("wrong signature")
    );
    let other = self::key(b"another secret entirely");
    assert!(parsed.verify(&answer, &other, &mac, 1_000_000).is_err());
    assert!(parsed.verify(&answer, &key, &[0; 32], 1_000_000).is_err());
    assert!(
        parsed
            .verify(&answer, &key, &mac, 1_000_400)
            .unwrap_err()
            .contains("clock")
    );
    // An unsigned answer is not trusted.
    let mut unsigned_answer = request[..unsigned].to_vec();
    unsigned_answer[2] |= 0x80;
    unsigned_answer[10..12].copy_from_slice(&[0, 0]);
    let u = wire::parse(&unsigned_answer).unwrap();
    assert!(
        u.verify(&unsigned_answer, &key, &mac, 1_000_000)
            .unwrap_err()
            .contains("not signed")
    );
}

#[test]
fn answers_are_read_through_compressed_names_and_refused_when_malformed() {
    // A TXT answer whose owner points at the question's name.
    let mut m = wire::query(9, "_acme-challenge.example.com", wire::TYPE_TXT).unwrap();
    m[2] = 0x84; // QR, AA
    m[7] = 2; // two answers
    for text in [&b"hello"[..], b"world"] {
        m.extend_from_slice(&[
            0xC0,
            12,
            0,
            16,
            0,
            1,
            0,
            0,
            0,
            60,
            0,
            text.len() as u8 + 1,
            text.len() as u8,
        ]);
        m.extend_from_slice(text);
    }
    let r = wire::parse(&m).unwrap();
    assert!(r.authoritative);
    assert_eq!(r.records.len(), 2);
    assert_eq!(r.records[0].name, "_acme-challenge.example.com");
    assert_eq!(
        (r.records[0].text(), r.records[1].text()),
        ("hello".into(), "world".into())
    );
    // Cut short anywhere: an error, never a panic.
    for end in 0..m.len() {
        let _ = wire::parse(&m[..end]);
    }
    // A pointer to itself or forwards could loop.
    let mut looping = m.clone();
    let at = looping.len() - 19;
    looping[at] = 0xC0;
    looping[at + 1] = at as u8;
    assert!(wire::parse(&looping).is_err());
}

#[test]
fn a_wildcard_is_proven_at_its_base_name() {
    assert_eq!(
        super::record_name("*.apps.example.com"),
        "_acme-challenge.apps.example.com"
    );
    assert_eq!(
        super::record_name("apps.example.com"),
        "_acme-challenge.apps.example.com"
    );
}

#[test]
fn the_server_is_reached_on_port_53_unless_it_says_otherwise() {
    for (given, address) in [
        ("ns1.example.com", "ns1.example.com:53"),
        ("ns1.example.com:5353", "ns1.example.com:5353"),
        ("192.0.2.1", "192.0.2.1:53"),
        ("192.0.2.1:5353", "192.0.2.1:5353"),
        ("2001:db8::1", "[2001:db8::1]:53"),
        ("[2001:db8::1]", "[2001:db8::1]:53"),
        ("[2001:db8::1]:5353", "[2001:db8::1]:5353"),
    ] {
        assert_eq!(super::server_address(given), address, "{given}");
    }
}
