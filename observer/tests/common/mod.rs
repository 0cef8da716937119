//! Shared pieces of the privileged integration tests, one file per job; the assertions live
//! in the tests themselves.
#![allow(dead_code, unused_imports)] // each test file uses its own subset

mod clients;
mod guards;
mod observer;
mod scrape;
mod servers;

pub use clients::*;
pub use guards::*;
pub use observer::*;
pub use scrape::*;
pub use servers::*;
