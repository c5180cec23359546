//! castellan: a self-hosted identity-aware proxy. It signs people in (OpenID Connect or local accounts),
//! decides every request against a per-app access list, and proxies allowed requests to the app with
//! a signed identity assertion.

#![forbid(unsafe_code)]

pub mod account;
pub mod acme;
pub mod admin;
pub mod api;
pub mod assertion;
pub mod audit;
pub mod bearer;
pub mod cli_auth;
pub mod config;
pub mod console;
pub mod crypto;
pub mod demo;
pub mod forward_auth;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod google;
pub mod live;
pub mod local;
pub mod metrics;
pub mod oidc;
pub mod pages;
pub mod passkey;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod request;
pub mod reserved;
pub mod return_to;
pub mod second_factor;
pub mod server;
pub mod store;
pub mod tls;
pub mod totp;
pub mod upstream;
pub mod web;
pub mod webauthn;
