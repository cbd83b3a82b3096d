//! The per-connection replay ring: the last messages a connection was sent,
//! so a client that saw a gap in `seq` can ask for them again.
//!
//! Entries hold an `Arc` of the published message, never a copy of its
//! payload: at 10,000 connections subscribed to one subject, the ring costs
//! a pointer per message per connection, not a payload. The ring is bounded
//! both by a count (`replay_window`) and by the bytes of the frames it can
//! re-send, whichever bites first.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::protocol::Published;

/// One retained message: its `seq` is implicit (the ring's entries carry
/// consecutive numbers, because every message a connection is sent takes
/// the next `seq` and enters the ring).
#[derive(Debug, Clone)]
struct Entry {
    message: Arc<Published>,
    frame_len: usize,
}

/// What a `replay(from, to)` can serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaySlice {
    /// Set when part of the range is no longer retained: the oldest
    /// `seq` still held (or the next `seq` when nothing is held).
    pub gap_oldest: Option<u64>,
    /// The retained messages of the range, in order, with their `seq`.
    pub messages: Vec<(u64, Arc<Published>)>,
}

/// Why a replay range cannot be served at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("from_seq ({from}) must be at least 1 and not greater than to_seq ({to})")]
    BadRange { from: u64, to: u64 },
    #[error("nothing has been sent with seq {from} or later yet (the last seq sent is {last})")]
    NotYetSent { from: u64, last: u64 },
}

/// Retained messages, oldest first.
#[derive(Debug, Clone)]
pub struct ReplayRing {
    /// 32 bits (saturating): every connection has a ring.
    max_messages: u32,
    max_bytes: u32,
    /// Boxed, and only once something is retained: an empty `VecDeque`
    /// alone is 32 bytes, and every connection has a ring.
    #[allow(clippy::box_collection)]
    entries: Option<Box<VecDeque<Entry>>>,
    /// At most `max_bytes`.
    bytes: u32,
    /// `seq` of `entries[0]`, or of the next message when empty.
    oldest_seq: u64,
}

impl ReplayRing {
    /// A ring keeping at most `max_messages` messages and `max_bytes` of
    /// frames. Storage grows as messages arrive: an idle connection's ring
    /// allocates nothing.
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        ReplayRing {
            max_messages: u32::try_from(max_messages).unwrap_or(u32::MAX),
            max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
            entries: None,
            bytes: 0,
            oldest_seq: 1,
        }
    }

    /// Records the message sent with `seq`, which must be the seq after the
    /// previous one pushed (the session guarantees it).
    pub fn push(&mut self, seq: u64, message: Arc<Published>, frame_len: usize) {
        debug_assert_eq!(seq, self.next_seq(), "seq must be consecutive");
        if self.is_empty() {
            self.oldest_seq = seq;
        }
        let entries = self.entries.get_or_insert_with(Box::default);
        entries.push_back(Entry { message, frame_len });
        let mut bytes = self.bytes as usize + frame_len;
        while entries.len() > self.max_messages as usize || bytes > self.max_bytes as usize {
            match entries.pop_front() {
                Some(old) => {
                    bytes -= old.frame_len;
                    self.oldest_seq += 1;
                }
                None => break,
            }
        }
        // Within max_bytes (a u32) once the loop is done.
        self.bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        if entries.is_empty() {
            // A window of 0, or one frame larger than the byte bound.
            self.entries = None;
            self.oldest_seq = seq + 1;
        }
    }

    /// The seq the next pushed message will have.
    pub fn next_seq(&self) -> u64 {
        self.oldest_seq + self.len() as u64
    }

    /// Oldest retained seq, if any.
    pub fn oldest(&self) -> Option<u64> {
        (!self.is_empty()).then_some(self.oldest_seq)
    }

    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |e| e.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of frames retained.
    pub fn bytes(&self) -> usize {
        self.bytes as usize
    }

    /// The retained part of `from..=to`. `to` past the last seq sent is
    /// clamped to it; a range entirely in the future is an error.
    pub fn slice(&self, from: u64, to: u64) -> Result<ReplaySlice, ReplayError> {
        if from == 0 || from > to {
            return Err(ReplayError::BadRange { from, to });
        }
        let last = self.next_seq() - 1;
        if from > last {
            return Err(ReplayError::NotYetSent { from, last });
        }
        let to = to.min(last);
        let gap_oldest = (from < self.oldest_seq).then_some(self.oldest_seq);
        let start = from.max(self.oldest_seq);
        let messages = (start..=to)
            .filter_map(|seq| {
                let index = usize::try_from(seq - self.oldest_seq).ok()?;
                self.entries
                    .as_ref()?
                    .get(index)
                    .map(|e| (seq, Arc::clone(&e.message)))
            })
            .collect();
        Ok(ReplaySlice {
            gap_oldest,
            messages,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Priority;
    use crate::subjects::Subject;

    fn msg(sseq: u64) -> Arc<Published> {
        let subject = Subject::parse("a.b").expect("valid");
        Published::new(subject, sseq, Priority::Medium, b"1")
    }

    fn filled(count: u64, max: usize, max_bytes: usize) -> ReplayRing {
        let mut ring = ReplayRing::new(max, max_bytes);
        for seq in 1..=count {
            ring.push(seq, msg(seq * 10), 10);
        }
        ring
    }

    fn seqs(slice: &ReplaySlice) -> Vec<u64> {
        slice.messages.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn keeps_the_last_n() {
        let ring = filled(150, 100, usize::MAX);
        assert_eq!(ring.oldest(), Some(51));
        assert_eq!(ring.next_seq(), 151);
        let slice = ring.slice(40, 60).expect("servable");
        assert_eq!(slice.gap_oldest, Some(51));
        assert_eq!(seqs(&slice), (51..=60).collect::<Vec<_>>());
        assert_eq!(slice.messages[0].1.sseq, 510, "original message kept");
    }

    #[test]
    fn byte_bound_bites_first() {
        let ring = filled(10, 100, 35);
        assert_eq!(ring.len(), 3);
        assert_eq!(ring.bytes(), 30);
        assert_eq!(ring.oldest(), Some(8));
    }

    #[test]
    fn to_is_clamped_and_future_ranges_refused() {
        let ring = filled(5, 100, usize::MAX);
        assert_eq!(seqs(&ring.slice(4, 99).expect("ok")), [4, 5]);
        assert_eq!(
            ring.slice(6, 9),
            Err(ReplayError::NotYetSent { from: 6, last: 5 })
        );
        assert_eq!(
            ring.slice(3, 2),
            Err(ReplayError::BadRange { from: 3, to: 2 })
        );
        assert_eq!(
            ring.slice(0, 2),
            Err(ReplayError::BadRange { from: 0, to: 2 })
        );
    }

    #[test]
    fn zero_window_retains_nothing_and_reports_the_gap() {
        let ring = filled(5, 0, usize::MAX);
        assert!(ring.is_empty());
        let slice = ring.slice(1, 5).expect("ok");
        assert_eq!(slice.gap_oldest, Some(6));
        assert!(slice.messages.is_empty());
    }

    #[test]
    fn payload_is_shared_not_copied() {
        let m = msg(1);
        let mut ring = ReplayRing::new(10, usize::MAX);
        ring.push(1, Arc::clone(&m), 10);
        let slice = ring.slice(1, 1).expect("ok");
        assert!(Arc::ptr_eq(&slice.messages[0].1, &m));
    }
}
