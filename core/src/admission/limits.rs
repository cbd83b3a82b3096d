//! Per-client limits: connections per source address and per user,
//! handshakes in progress per address, and new connections per second per
//! address.
//!
//! These are checked inside admission's own calls (`admit`,
//! `bind_user`), which take `&mut self`: the check and the count it guards
//! change together, so two connections from one address cannot both see
//! the last free place.
//!
//! Nothing is tracked while every limit is off (the default), so a gateway
//! without them pays no map entry per connection. Behind an L4 load
//! balancer every client has the balancer's address; per-address limits
//! are then meaningless and must stay off.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use super::refusal::Refusal;
use crate::Instant;
use crate::ratelimit::TokenBucket;

/// The per-client limits; 0 turns a limit off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientLimitConfig {
    /// Connections (in their handshake or upgraded) per source address.
    pub connections_per_ip: u32,
    /// Upgraded or upgrading connections per token `sub`.
    pub connections_per_user: u32,
    /// Handshakes in progress per source address: the sockets an address
    /// may hold open without having sent a complete request.
    pub handshakes_per_ip: u32,
    /// New connections per second per source address (the burst is one
    /// second's worth).
    pub handshake_rate_per_ip: u32,
}

impl ClientLimitConfig {
    fn any(&self) -> bool {
        self.connections_per_ip != 0
            || self.connections_per_user != 0
            || self.handshakes_per_ip != 0
            || self.handshake_rate_per_ip != 0
    }
}

/// One source address's counts.
#[derive(Debug, Clone)]
struct Address {
    connections: u32,
    handshaking: u32,
    /// Present while the rate limit is on.
    rate: Option<TokenBucket>,
}

/// Who holds a slot, by the slot's serial.
#[derive(Debug, Clone)]
struct Holder {
    ip: IpAddr,
    user: Option<Box<str>>,
    handshaking: bool,
}

/// The counts behind the limits.
#[derive(Debug, Clone, Default)]
pub(super) struct ClientLimits {
    config: ClientLimitConfig,
    addresses: HashMap<IpAddr, Address>,
    users: HashMap<Box<str>, u32>,
    holders: HashMap<u64, Holder>,
}

impl ClientLimits {
    pub fn new(config: ClientLimitConfig) -> Self {
        ClientLimits {
            config,
            ..ClientLimits::default()
        }
    }

    pub fn config(&self) -> ClientLimitConfig {
        self.config
    }

    /// Whether a new connection from `ip` may take a slot. Spends a rate
    /// token when the rate limit is on: attempts are what it limits.
    pub fn check_new(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        if !self.config.any() {
            return Ok(());
        }
        let config = self.config;
        let address = self.address(ip, now);
        if let Some(bucket) = address.rate.as_mut()
            && !bucket.try_acquire(1, now)
        {
            let wait = bucket
                .ready_at(1, now)
                .map_or(Duration::from_secs(1), |at| {
                    at.saturating_duration_since(now)
                });
            return Err(Refusal::HandshakeRate {
                limit: config.handshake_rate_per_ip,
                retry_after_secs: whole_seconds(wait),
            });
        }
        if config.handshakes_per_ip != 0 && address.handshaking >= config.handshakes_per_ip {
            return Err(Refusal::HandshakesPerIp {
                limit: config.handshakes_per_ip,
            });
        }
        if config.connections_per_ip != 0 && address.connections >= config.connections_per_ip {
            return Err(Refusal::PerIp {
                limit: config.connections_per_ip,
            });
        }
        Ok(())
    }

    /// The slot `serial` was reserved for `ip` (after `check_new` passed).
    pub fn reserved(&mut self, serial: u64, ip: IpAddr, now: Instant) {
        if !self.config.any() {
            return;
        }
        let address = self.address(ip, now);
        address.connections += 1;
        address.handshaking += 1;
        self.holders.insert(
            serial,
            Holder {
                ip,
                user: None,
                handshaking: true,
            },
        );
    }

    /// The handshake of `serial` authenticated as `user`: counted against
    /// the user's limit, or refused when the user is at it.
    pub fn bind_user(&mut self, serial: u64, user: &str) -> Result<(), Refusal> {
        let limit = self.config.connections_per_user;
        if limit == 0 {
            return Ok(());
        }
        let Some(holder) = self.holders.get_mut(&serial) else {
            return Ok(());
        };
        if holder.user.is_some() {
            return Ok(());
        }
        let count = self.users.get(user).copied().unwrap_or(0);
        if count >= limit {
            return Err(Refusal::PerUser { limit });
        }
        *self.users.entry(user.into()).or_insert(0) += 1;
        holder.user = Some(user.into());
        Ok(())
    }

    /// The handshake of `serial` completed: no longer counted as pending.
    pub fn upgraded(&mut self, serial: u64) {
        let Some(holder) = self.holders.get_mut(&serial) else {
            return;
        };
        if std::mem::replace(&mut holder.handshaking, false)
            && let Some(address) = self.addresses.get_mut(&holder.ip)
        {
            address.handshaking -= 1;
        }
    }

    /// The slot `serial` was freed (aborted handshake or closed connection).
    pub fn released(&mut self, serial: u64) {
        let Some(holder) = self.holders.remove(&serial) else {
            return;
        };
        if let Some(address) = self.addresses.get_mut(&holder.ip) {
            address.connections -= 1;
            if holder.handshaking {
                address.handshaking -= 1;
            }
            // A bucket that is not full still remembers recent attempts;
            // `prune` drops it once it has refilled.
            if address.connections == 0 && address.rate.is_none() {
                self.addresses.remove(&holder.ip);
            }
        }
        if let Some(user) = holder.user
            && let Some(count) = self.users.get_mut(&user)
        {
            *count -= 1;
            if *count == 0 {
                self.users.remove(&user);
            }
        }
    }

    /// Forgets addresses with no connection whose rate bucket has refilled,
    /// so the table holds only addresses that are connected or recently
    /// active. Call it now and then (the gateway does on every resource
    /// sample).
    pub fn prune(&mut self, now: Instant) {
        let burst = self.config.handshake_rate_per_ip;
        self.addresses.retain(|_, a| {
            a.connections > 0 || a.rate.as_mut().is_some_and(|b| b.available(now) < burst)
        });
    }

    /// Source addresses currently tracked.
    pub fn tracked_addresses(&self) -> usize {
        self.addresses.len()
    }

    /// Connections currently counted for `ip`.
    pub fn connections_from(&self, ip: IpAddr) -> u32 {
        self.addresses.get(&ip).map_or(0, |a| a.connections)
    }

    /// Handshakes in progress counted for `ip`.
    pub fn handshaking_from(&self, ip: IpAddr) -> u32 {
        self.addresses.get(&ip).map_or(0, |a| a.handshaking)
    }

    /// Connections currently counted for `user`.
    pub fn connections_of(&self, user: &str) -> u32 {
        self.users.get(user).copied().unwrap_or(0)
    }

    fn address(&mut self, ip: IpAddr, now: Instant) -> &mut Address {
        let rate = self.config.handshake_rate_per_ip;
        self.addresses.entry(ip).or_insert_with(|| Address {
            connections: 0,
            handshaking: 0,
            rate: (rate != 0).then(|| TokenBucket::new(rate, rate, now)),
        })
    }
}

/// A wait as `Retry-After` seconds: rounded up, at least 1.
fn whole_seconds(wait: Duration) -> u32 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}
