//! The closing handshake (RFC 6455 §7.1.1, §5.5.1) as a small state
//! machine: it says what to write and when to drop the TCP connection; the
//! driver does the writing and passes the time in.
//!
//! The rules:
//!
//! - server-initiated ([`CloseState::initiate`]): write a Close frame, send
//!   no data frame after it, then wait for the client's Close, but only
//!   until the deadline, because a client that never answers must not hold
//!   a connection. Either way the server then closes TCP (the server closes
//!   first, so the TIME_WAIT lands on it, as RFC 6455 §7.1.1 asks);
//! - client-initiated ([`CloseState::on_peer_close`] while open): answer
//!   with a Close echoing the client's code, then close TCP;
//! - protocol error ([`CloseState::fail`]): write a Close with
//!   [`super::FrameError::close_code`], then close TCP without waiting (the
//!   decoder has stopped, so the client's Close could not be read anyway).

use std::time::Duration;

use crate::Instant;

/// Where one connection is in the closing handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CloseState {
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    #[default]
    Open,
    /// The server's Close is written; the client's is awaited.
    AwaitingPeerClose { deadline: Instant },
    /// Nothing more goes either way; the TCP connection is (to be) closed.
    Done,
}

/// What the driver must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAction {
    /// Nothing now.
    None,
    /// Write a Close frame with `code` ([`super::close_frame_into`]), flush
    /// it and close the TCP connection.
    ReplyThenCloseTcp { code: u16 },
    /// Flush what is queued and close the TCP connection.
    CloseTcp,
}

impl CloseState {
    pub fn new() -> Self {
        CloseState::default()
    }

    /// No Close sent or received yet: messages flow both ways. Once this is
    /// false the server sends no data frames and may ignore the client's.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// The handshake is over; the TCP connection is to be closed.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The server closes (shutdown, policy, slow client). Returns `true`
    /// when the driver must now write its Close frame; `false` when a close
    /// is already under way (write nothing). The client's Close is awaited
    /// until `now + wait`.
    pub fn initiate(&mut self, now: Instant, wait: Duration) -> bool {
        if self.phase != Phase::Open {
            return false;
        }
        self.phase = Phase::AwaitingPeerClose {
            deadline: now + wait,
        };
        true
    }

    /// The client broke the protocol. Returns `true` when the driver must
    /// write a Close frame with the error's code before closing TCP at once;
    /// `false` when the server's Close was already sent (just close TCP).
    pub fn fail(&mut self) -> bool {
        let write_close = self.phase == Phase::Open;
        self.phase = Phase::Done;
        write_close
    }

    /// The decoder produced [`super::Event::Close`] with `code`. While open,
    /// the answer echoes the client's code (1000 when it sent none).
    pub fn on_peer_close(&mut self, code: Option<u16>) -> CloseAction {
        let action = match self.phase {
            Phase::Open => CloseAction::ReplyThenCloseTcp {
                code: code.unwrap_or(1000),
            },
            Phase::AwaitingPeerClose { .. } => CloseAction::CloseTcp,
            Phase::Done => CloseAction::None,
        };
        self.phase = Phase::Done;
        action
    }

    /// The TCP connection ended (EOF or error): nothing is left to do.
    pub fn on_transport_closed(&mut self) {
        self.phase = Phase::Done;
    }

    /// When to call [`CloseState::handle_timeout`]: the end of the wait for
    /// the client's Close, if one is being awaited.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitingPeerClose { deadline } => Some(deadline),
            Phase::Open | Phase::Done => None,
        }
    }

    /// Gives up on the client's Close once its deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> CloseAction {
        match self.phase {
            Phase::AwaitingPeerClose { deadline } if now >= deadline => {
                self.phase = Phase::Done;
                CloseAction::CloseTcp
            }
            _ => CloseAction::None,
        }
    }
}
