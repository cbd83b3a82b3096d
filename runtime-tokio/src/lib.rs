//! Drives surge-core with tokio.
