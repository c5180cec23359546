//! Access levels: named, reusable requirements on the request's context (`[[access_levels]]`),
//! which conditions reference as IAP's do: `"NAME" in request.auth.access_levels`. A level holds
//! when every requirement it has holds: the client's address in one of its IP ranges, a client
//! certificate that castellan verified against `[tls] client_ca` (a device certificate), and a
//! time window (days and hours in a time zone).

use std::net::IpAddr;

use crate::net::IpNet;

use super::condition::Zone;

/// One `[[access_levels]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLevel {
    /// What conditions name, e.g. `accessPolicies/1234/accessLevels/corp_devices`.
    pub name: String,
    /// The client's address is in one of these (any, when empty).
    pub ip_ranges: Vec<IpNet>,
    /// The connection presented a client certificate that castellan verified.
    pub client_certificate: bool,
    pub window: Option<Window>,
}

/// Days of the week and hours of the day, in a time zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Days that are in, Monday = 0 … Sunday = 6.
    pub days: [bool; 7],
    /// Minutes after midnight: from (inclusive) to (exclusive).
    pub from: u16,
    pub to: u16,
    pub zone: Zone,
}

/// What access levels look at in a request.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub ip: Option<IpAddr>,
    /// A client certificate verified against the configured CA.
    pub client_certificate: bool,
    /// Unix seconds.
    pub time: i64,
}

impl AccessLevel {
    /// Whether the request `seen` meets every requirement of this level. A client address
    /// castellan does not know never meets an IP range.
    pub fn met_by(&self, seen: &Seen) -> bool {
        let ip = self.ip_ranges.is_empty()
            || seen
                .ip
                .is_some_and(|ip| self.ip_ranges.iter().any(|r| r.contains(ip)));
        let cert = !self.client_certificate || seen.client_certificate;
        let window = self.window.as_ref().is_none_or(|w| w.contains(seen.time));
        ip && cert && window
    }
}

impl Window {
    pub fn contains(&self, time: i64) -> bool {
        let Some((day, minute)) = self.zone.weekday_and_minute(time) else {
            return false;
        };
        self.days[day] && minute >= self.from && minute < self.to
    }
}

/// The names of the `levels` that `seen` meets.
pub fn met<'a>(levels: &'a [AccessLevel], seen: &Seen) -> Vec<&'a str> {
    levels
        .iter()
        .filter(|l| l.met_by(seen))
        .map(|l| l.name.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> i64 {
        crate::clock::parse_rfc3339(rfc3339).unwrap()
    }

    #[test]
    fn a_level_holds_when_every_requirement_does() {
        let office = AccessLevel {
            name: "office".into(),
            ip_ranges: vec![IpNet::parse("10.0.0.0/8").unwrap()],
            client_certificate: true,
            window: Some(Window {
                days: [true, true, true, true, true, false, false],
                from: 9 * 60,
                to: 17 * 60,
                zone: Zone::parse("Europe/Berlin").unwrap(),
            }),
        };
        // Monday 2027-03-01, 10:00 in Berlin (09:00 UTC).
        let seen = Seen {
            ip: Some("10.1.2.3".parse().unwrap()),
            client_certificate: true,
            time: at("2027-03-01T09:00:00Z"),
        };
        assert!(office.met_by(&seen));
        for (what, other) in [
            (
                "another network",
                Seen {
                    ip: Some("192.0.2.1".parse().unwrap()),
                    ..seen
                },
            ),
            ("no address", Seen { ip: None, ..seen }),
            (
                "no certificate",
                Seen {
                    client_certificate: false,
                    ..seen
                },
            ),
            // 17:00 Berlin is out (the window's end is exclusive), 08:59 too.
            (
                "after hours",
                Seen {
                    time: at("2027-03-01T16:00:00Z"),
                    ..seen
                },
            ),
            (
                "before hours",
                Seen {
                    time: at("2027-03-01T07:59:00Z"),
                    ..seen
                },
            ),
            (
                "Saturday",
                Seen {
                    time: at("2027-03-06T09:00:00Z"),
                    ..seen
                },
            ),
        ] {
            assert!(!office.met_by(&other), "{what}");
        }
        let anywhere = AccessLevel {
            name: "device".into(),
            ip_ranges: vec![],
            client_certificate: true,
            window: None,
        };
        assert_eq!(
            met(&[office.clone(), anywhere.clone()], &seen),
            ["office", "device"]
        );
        let late = Seen {
            time: at("2027-03-01T20:00:00Z"),
            ..seen
        };
        assert_eq!(met(&[office, anywhere], &late), ["device"]);
    }
}
