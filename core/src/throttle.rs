//! Adaptive throttling of slow clients (modelled on the Go system surge replaces).
//!
//! A client whose outbound queue keeps filling is not disconnected at once:
//! it is moved down one level at a time, receiving fewer messages, and
//! moved back up after a quiet window. Dropping is priority-aware: lower
//! priorities go first and `critical` is never dropped by the throttle.
//! Only when the heaviest level still cannot keep the queue from filling is
//! the client disconnected (close 1008), as the seed system did.

use std::time::Duration;

use crate::Instant;
use crate::protocol::{Priority, ServerMessage};

/// How much of the stream a client receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum ThrottleLevel {
    /// Everything (100 %).
    #[default]
    None = 0,
    /// 75 % of medium-priority traffic.
    Light = 1,
    /// 50 %.
    Medium = 2,
    /// 25 %: the last level before disconnection.
    Heavy = 3,
}

impl ThrottleLevel {
    pub const ALL: [ThrottleLevel; 4] = [
        ThrottleLevel::None,
        ThrottleLevel::Light,
        ThrottleLevel::Medium,
        ThrottleLevel::Heavy,
    ];

    pub fn as_u8(self) -> u8 {
        self as u8
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ThrottleLevel::None => "none",
            ThrottleLevel::Light => "light",
            ThrottleLevel::Medium => "medium",
            ThrottleLevel::Heavy => "heavy",
        }
    }

    fn up(self) -> Option<Self> {
        ThrottleLevel::ALL.get(self as usize + 1).copied()
    }

    fn down(self) -> Option<Self> {
        (self as usize)
            .checked_sub(1)
            .map(|i| ThrottleLevel::ALL[i])
    }

    /// Quarters of the messages of `priority` that are kept at this level.
    /// Medium, the default priority, follows the seed's 100/75/50/25 %;
    /// lower priorities lose more, higher ones less, critical nothing.
    /// Each column never increases with the level, each row never
    /// decreases with the priority.
    pub fn kept_quarters(self, priority: Priority) -> u8 {
        const TABLE: [[u8; 4]; 4] = [
            // low, medium, high, critical
            [4, 4, 4, 4], // none
            [2, 3, 4, 4], // light
            [1, 2, 3, 4], // medium
            [0, 1, 2, 4], // heavy
        ];
        TABLE[self as usize][priority.index()]
    }

    /// The rate announced in `throttle_update` (that of medium priority).
    pub fn rate_percent(self) -> u8 {
        self.kept_quarters(Priority::Medium) * 25
    }

    /// The sentence shown to the client with each change.
    pub fn notice(self) -> ServerMessage {
        let message = match self {
            ThrottleLevel::None => "Connection quality restored. Receiving all updates.",
            ThrottleLevel::Light => "Your connection is slightly slow. Receiving 75% of updates.",
            ThrottleLevel::Medium => "Your connection is slow. Receiving 50% of updates.",
            ThrottleLevel::Heavy => {
                "Your connection is very slow. Receiving 25% of updates; critical updates are always sent."
            }
        };
        ServerMessage::ThrottleUpdate {
            level: self.as_u8(),
            rate_percent: self.rate_percent(),
            message: message.into(),
        }
    }
}

/// The throttle's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Consecutive full-queue events that raise the level by one (seed: 3).
    pub full_events_to_escalate: u32,
    /// Time without a full-queue event after which the level falls by one
    /// (seed: 30 s).
    pub recovery_window: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            full_events_to_escalate: 3,
            recovery_window: Duration::from_secs(30),
        }
    }
}

/// A change the driver must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleChange {
    /// The level rose; tell the client.
    Raised(ThrottleLevel),
    /// The level fell after a quiet window; tell the client.
    Lowered(ThrottleLevel),
    /// Still too slow at the heaviest level: close with 1008.
    Disconnect,
}

/// One connection's throttle.
#[derive(Debug, Clone)]
///
/// The configuration is passed to each call rather than stored: every
/// connection has a throttle, and they all share one configuration.
pub struct Throttle {
    level: ThrottleLevel,
    consecutive_full: u32,
    /// Last full-queue event or level change: the quiet window runs from it.
    last_pressure: Instant,
    /// Per-priority message counters for deterministic sampling.
    counters: [u8; 4],
}

impl Throttle {
    pub fn new(now: Instant) -> Self {
        Throttle {
            level: ThrottleLevel::None,
            consecutive_full: 0,
            last_pressure: now,
            counters: [0; 4],
        }
    }

    pub fn level(&self) -> ThrottleLevel {
        self.level
    }

    /// Whether a message of `priority` is sent at the current level.
    /// Deterministic: of every four messages of a priority, the first
    /// `kept_quarters` are sent, so drops are spread evenly.
    pub fn admits(&mut self, priority: Priority) -> bool {
        let kept = self.level.kept_quarters(priority);
        if kept >= 4 {
            return true;
        }
        let counter = &mut self.counters[priority.index()];
        let position = *counter;
        *counter = (*counter + 1) % 4;
        position < kept
    }

    /// A message found the outbound queue full.
    pub fn on_queue_full(
        &mut self,
        config: &ThrottleConfig,
        now: Instant,
    ) -> Option<ThrottleChange> {
        self.last_pressure = now;
        self.consecutive_full += 1;
        if self.consecutive_full < config.full_events_to_escalate.max(1) {
            return None;
        }
        self.consecutive_full = 0;
        match self.level.up() {
            Some(next) => {
                self.level = next;
                Some(ThrottleChange::Raised(next))
            }
            None => Some(ThrottleChange::Disconnect),
        }
    }

    /// A message fitted in the queue: the run of full events is broken.
    pub fn on_enqueued(&mut self) {
        self.consecutive_full = 0;
    }

    /// When the level may next fall, if it is above none.
    pub fn poll_timeout(&self, config: &ThrottleConfig) -> Option<Instant> {
        (self.level != ThrottleLevel::None).then(|| self.last_pressure + config.recovery_window)
    }

    /// Lowers the level by one when a whole quiet window has passed.
    pub fn handle_timeout(
        &mut self,
        config: &ThrottleConfig,
        now: Instant,
    ) -> Option<ThrottleChange> {
        let due = self.poll_timeout(config)?;
        if now < due {
            return None;
        }
        let lower = self.level.down()?;
        self.level = lower;
        self.last_pressure = now;
        self.consecutive_full = 0;
        Some(ThrottleChange::Lowered(lower))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Instant {
        Instant::from_millis(v)
    }

    #[test]
    fn escalates_after_k_full_events_and_disconnects_past_heavy() {
        let mut t = Throttle::new(ms(0));
        let mut changes = Vec::new();
        for i in 0..12 {
            if let Some(c) = t.on_queue_full(&ThrottleConfig::default(), ms(i)) {
                changes.push(c);
            }
        }
        assert_eq!(
            changes,
            [
                ThrottleChange::Raised(ThrottleLevel::Light),
                ThrottleChange::Raised(ThrottleLevel::Medium),
                ThrottleChange::Raised(ThrottleLevel::Heavy),
                ThrottleChange::Disconnect,
            ]
        );
    }

    #[test]
    fn an_enqueued_message_breaks_the_run() {
        let mut t = Throttle::new(ms(0));
        for _ in 0..10 {
            assert_eq!(t.on_queue_full(&ThrottleConfig::default(), ms(1)), None);
            assert_eq!(t.on_queue_full(&ThrottleConfig::default(), ms(1)), None);
            t.on_enqueued();
        }
        assert_eq!(t.level(), ThrottleLevel::None);
    }

    #[test]
    fn quiet_window_lowers_one_level_at_a_time() {
        let mut t = Throttle::new(ms(0));
        for _ in 0..6 {
            t.on_queue_full(&ThrottleConfig::default(), ms(1_000));
        }
        assert_eq!(t.level(), ThrottleLevel::Medium);
        assert_eq!(t.poll_timeout(&ThrottleConfig::default()), Some(ms(31_000)));
        assert_eq!(
            t.handle_timeout(&ThrottleConfig::default(), ms(30_999)),
            None
        );
        assert_eq!(
            t.handle_timeout(&ThrottleConfig::default(), ms(31_000)),
            Some(ThrottleChange::Lowered(ThrottleLevel::Light))
        );
        assert_eq!(t.poll_timeout(&ThrottleConfig::default()), Some(ms(61_000)));
        assert_eq!(
            t.handle_timeout(&ThrottleConfig::default(), ms(61_000)),
            Some(ThrottleChange::Lowered(ThrottleLevel::None))
        );
        assert_eq!(t.poll_timeout(&ThrottleConfig::default()), None);
    }

    #[test]
    fn sampling_keeps_the_announced_share() {
        for level in ThrottleLevel::ALL {
            let mut t = Throttle::new(ms(0));
            t.level = level;
            for p in Priority::ALL {
                let sent = (0..400).filter(|_| t.admits(p)).count();
                assert_eq!(
                    sent,
                    usize::from(level.kept_quarters(p)) * 100,
                    "{level:?} {p:?}"
                );
            }
            let medium = (0..100).filter(|_| t.admits(Priority::Medium)).count();
            assert_eq!(medium, usize::from(level.rate_percent()));
        }
    }

    #[test]
    fn lower_priorities_go_first_and_critical_never() {
        for level in ThrottleLevel::ALL {
            assert_eq!(level.kept_quarters(Priority::Critical), 4);
            for w in Priority::ALL.windows(2) {
                assert!(level.kept_quarters(w[0]) <= level.kept_quarters(w[1]));
            }
        }
        assert_eq!(
            ThrottleLevel::ALL.map(ThrottleLevel::rate_percent),
            [100, 75, 50, 25]
        );
    }
}
