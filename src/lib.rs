//! castellan: a self-hosted identity-aware proxy. It signs people in (OpenID Connect or local accounts),
//! decides every request against a per-app access list, and proxies allowed requests to the app with
//! a signed identity assertion.
//!
//! The crate is built in layers; each module may use only those listed before it (the architecture
//! test in `tests/architecture.rs` holds every `use crate::` line to this):
//!
//! ```text
//! clock, net, crypto,  leaves: time, IP networks, random tokens and digests, the tunnel wire
//! tunnel, trace        protocol (a TCP stream in a WebSocket), W3C trace context and OTLP spans
//! policy               the pure IAM core: model, conditions, snapshot, decide/explain
//! config               castellan.toml → typed Config; the only reader of the environment
//! store                SQLite/PostgreSQL and the change feed; the only user of sqlx
//! identity             who someone is: provider clients, castellan's tokens, passwords, TOTP, WebAuthn
//! web                  HTTP plumbing: bodies, pages, cookies, the one Failure type, the one CSRF guard
//! runtime              shared state by concern: sessions, keys, snapshot, audit writer, metrics, TLS
//! gate                 the proxied path: credential → checks → decision → live registration → identity
//! endpoints            castellan's own pages: sign-in, hand-off, account, tokens, forward-auth
//! admin                console, admin API, policy operations shared with the CLI
//! server               accept loop, routing (the only place that sees gate, endpoints and admin)
//! ```

#![forbid(unsafe_code)]

pub mod admin;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod endpoints;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod gate;
pub mod identity;
pub mod net;
pub mod policy;
pub mod runtime;
pub mod server;
pub mod store;
pub mod trace;
pub mod tunnel;
pub mod web;
