//! What reaches a shard's task from outside it: upgraded connections from
//! their handshake tasks, resume fetches that came back, shutdown. Below
//! both the shard and its links, which send to it.

use surge_core::Instant;
use surge_core::auth::Grant;

use crate::broker::{BrokerError, Fetched};
use crate::slot::SlotGuard;

/// What reaches a shard's task besides published messages.
pub(crate) enum Inbox<S> {
    /// A connection whose handshake succeeded.
    Adopt(Handoff<S>),
    /// A resume's broker fetch finished.
    Fetched {
        token: usize,
        serial: u64,
        result: Result<Fetched, BrokerError>,
    },
    /// Close every connection with 1001.
    Shutdown,
}

/// An upgraded connection on its way from its handshake task to its shard.
pub(crate) struct Handoff<S> {
    pub stream: S,
    /// Still reserved: completed when the shard takes the connection, so a
    /// live slot always has a registered connection.
    pub slot: SlotGuard,
    /// The 101, written together with the welcome frame.
    pub response: Vec<u8>,
    /// Bytes that followed the request head.
    pub leftover: Vec<u8>,
    /// What the connection may read, when JWT authentication is on.
    pub grant: Option<Grant>,
    /// permessage-deflate, when the upgrade negotiated it.
    pub deflate: Option<surge_core::deflate::Deflate>,
    /// When the connection was accepted (for the handshake duration).
    pub accepted: Instant,
}
