//! castellan's end-to-end tests: the real binary, a real OpenID Provider, real Streamlit and Chromium.
//! Run through `scripts/test.sh`, which installs what they need first.

mod adversarial;
mod api;
mod audit;
mod audit_sinks;
mod browser;
mod cli;
mod cli_login;
mod console;
mod context;
mod deploy;
mod directory;
mod dns01;
mod entra;
mod faults;
mod forward_auth;
mod google;
mod lifecycle;
mod local;
mod oidc;
mod policy;
mod process_state;
mod programmatic;
mod provider_tokens;
mod proxy;
mod reload;
mod replicas;
mod review;
mod scim;
mod step_up;
mod support;
mod tls;
mod tracing;
mod tunnel;
mod upstreams;
