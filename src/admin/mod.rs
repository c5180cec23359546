//! Administration: the console, the admin API, and the policy operations they share with the
//! command line.

mod actions;
pub mod api;
pub mod console;
pub mod ops;
mod views;
