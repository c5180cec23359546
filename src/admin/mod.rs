//! Administration: the console, the admin API, and the policy operations they share with the
//! command line.
//!
//! May use: runtime, web, identity, store, policy, config and the leaves; never the gate or
//! castellan's other endpoints (the server routes to both).

mod actions;
pub mod api;
pub mod console;
pub mod gcloud;
pub mod ops;
mod views;
