//! The parts of the `surge` binary that are plain functions over the host:
//! reading and raising host limits (`host`), the `surge doctor` report built
//! from them (`doctor`), and the process CPU / memory sampler behind the
//! resource guard and `/health` (`resources`). They live in a library so the
//! binary and the tests share one copy.

pub mod admin;
pub mod admin_url;
pub mod cli;
pub mod dashboard;
pub mod doctor;
pub mod feed;
pub mod host;
pub mod jwt;
pub mod nats;
pub mod plan;
pub mod reload;
pub mod resources;
pub mod serve;
pub mod tls;
pub mod token;
pub mod top;
