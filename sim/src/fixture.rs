//! The seed system's admission, kept **only** as a test fixture for the
//! `slot_race` scenario: it shows what surge's atomic admission prevents.
//!
//! The load balancer of the Go system surge replaces checked a shard for a free slot, awaited the
//! WebSocket upgrade, and only then took the slot. Every handshake in
//! flight saw the same free slot, so near capacity the shards admitted
//! more connections than they had room for (56.8 % of a surge failed).
//! Nothing outside `slot_race` may use this type: surge's gateway admits
//! through `surge_core::admission::Admission::admit`, which checks and
//! reserves in one step.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use surge_core::handshake::{Handshake, HandshakeConfig, Outcome, Progress, overloaded_response};
use surge_runtime::{Listener, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::{NetShared, SimTransport};

/// One shard's slots as the seed counted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixtureShard {
    pub capacity: u32,
    pub live: u32,
    /// Most connections this shard ever held at once.
    pub peak: u32,
}

/// The deliberately wrong selector: `check` then (after an await)
/// `acquire`, with nothing in between that holds the slot.
#[derive(Debug, Clone)]
pub struct CheckThenAcquireFixture {
    shards: Vec<FixtureShard>,
    /// Most connections held at once over all shards.
    peak_live: u32,
}

impl CheckThenAcquireFixture {
    pub fn new(capacity: u32, shards: u32) -> Self {
        let shards = shards.max(1);
        CheckThenAcquireFixture {
            shards: (0..shards)
                .map(|i| FixtureShard {
                    capacity: capacity / shards + u32::from(i < capacity % shards),
                    live: 0,
                    peak: 0,
                })
                .collect(),
            peak_live: 0,
        }
    }

    /// The least-loaded shard with a free slot *now* (the seed's check).
    pub fn check(&self) -> Option<usize> {
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.live < s.capacity)
            .min_by_key(|(i, s)| {
                (
                    u64::from(s.live) * 1_000_000 / u64::from(s.capacity.max(1)),
                    *i,
                )
            })
            .map(|(i, _)| i)
    }

    /// Takes the slot the earlier check saw, without checking again.
    pub fn acquire(&mut self, shard: usize) {
        if let Some(s) = self.shards.get_mut(shard) {
            s.live += 1;
            s.peak = s.peak.max(s.live);
        }
        self.peak_live = self.peak_live.max(self.live());
    }

    pub fn release(&mut self, shard: usize) {
        if let Some(s) = self.shards.get_mut(shard) {
            s.live = s.live.saturating_sub(1);
        }
    }

    pub fn shards(&self) -> &[FixtureShard] {
        &self.shards
    }

    /// Connections admitted beyond capacity, at the worst moment, summed
    /// over shards.
    pub fn over_admitted(&self) -> u32 {
        self.shards
            .iter()
            .map(|s| s.peak.saturating_sub(s.capacity))
            .sum()
    }

    /// Most connections held at once over all shards, at the moment it
    /// happened (the per-shard peaks may fall at different moments).
    pub fn peak_live(&self) -> u32 {
        self.peak_live
    }

    pub fn live(&self) -> u32 {
        self.shards.iter().map(|s| s.live).sum()
    }
}

/// A server that admits through the fixture: check, read the upgrade
/// request through core's handshake, forward it to the shard (the seed's
/// proxy hop, `proxy_hop` long), acquire, answer 101, hold the connection
/// until the client leaves.
pub async fn serve(
    transport: SimTransport,
    addr: SocketAddr,
    backlog: u32,
    fixture: Rc<RefCell<CheckThenAcquireFixture>>,
    handshake: Arc<HandshakeConfig>,
    proxy_hop: Duration,
) -> std::io::Result<Arc<NetShared>> {
    let shared = transport.shared();
    let mut listener = transport.bind(addr, backlog).await?;
    tokio::task::spawn_local(async move {
        let clock = surge_runtime::Clock::start();
        loop {
            let Ok((mut stream, _peer)) = listener.accept().await else {
                continue;
            };
            let fixture = Rc::clone(&fixture);
            let handshake = Arc::clone(&handshake);
            tokio::task::spawn_local(async move {
                let checked = fixture.borrow().check();
                let Some(shard) = checked else {
                    let _ = stream.write_all(&overloaded_response(5).response).await;
                    return;
                };
                // The await between check and acquire: the race.
                let accepted = clock.now();
                let mut hs = Handshake::new(handshake, accepted, clock.unix_at(accepted));
                let mut buf = vec![0u8; 2048];
                let outcome = loop {
                    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await
                    {
                        Ok(Ok(n)) if n > 0 => match hs.feed(&buf[..n], clock.now()) {
                            Progress::NeedMore => {}
                            Progress::Done(outcome) => break Some(outcome),
                            Progress::Finished => break None,
                        },
                        _ => break None,
                    }
                };
                let Some(Outcome::Accept(accepted)) = outcome else {
                    return;
                };
                // The proxy dials the shard process and forwards the
                // upgrade; the slot is taken only when the shard answers.
                tokio::time::sleep(proxy_hop).await;
                fixture.borrow_mut().acquire(shard);
                if stream.write_all(&accepted.response).await.is_ok() {
                    // Hold until the client closes.
                    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                }
                fixture.borrow_mut().release(shard);
            });
        }
    });
    Ok(shared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_checks_see_the_same_slot_and_over_admit() {
        let mut f = CheckThenAcquireFixture::new(2, 1);
        // Three handshakes check before any of them acquires.
        let checks: Vec<_> = (0..3).map(|_| f.check()).collect();
        assert_eq!(checks, vec![Some(0), Some(0), Some(0)]);
        for c in checks.into_iter().flatten() {
            f.acquire(c);
        }
        assert_eq!(f.over_admitted(), 1);
    }
}
