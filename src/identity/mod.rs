//! Who someone is, and the credentials that say so: OpenID Connect provider clients, castellan's
//! own signed assertions and access tokens, local-account passwords, TOTP, WebAuthn verification,
//! and Google Cloud's metadata-server ID tokens. Uses the store for keys; knows no HTTP requests.
//!
//! May use: store, config, policy and the leaves.

pub mod assertion;
pub mod directory;
pub mod google;
pub mod local;
pub mod oidc;
pub mod totp;
pub mod webauthn;
