//! A reserved admission slot held by a connection between accept and its
//! shard: released exactly once, by `Drop` if no path released it. Below
//! the upgrade path and the shard, which both hold one.

use std::sync::{Arc, Mutex};

use surge_core::admission::{AbortCause, Admission, LiveSlot, Refusal, Reservation};
use surge_core::handshake::{Rejection, refusal_response};

use crate::sync::lock;

/// Holds a reserved slot until the handshake ends: aborted on failure (by
/// `Drop` if nothing else did), completed by the shard on success.
pub(crate) struct SlotGuard {
    admission: Arc<Mutex<Admission>>,
    pub(crate) state: SlotState,
}

pub(crate) enum SlotState {
    Reserved(Reservation),
    Released,
}

impl SlotGuard {
    pub fn new(admission: Arc<Mutex<Admission>>, reservation: Reservation) -> Self {
        SlotGuard {
            admission,
            state: SlotState::Reserved(reservation),
        }
    }

    /// Completes a reserved slot and hands the live one to its new owner,
    /// who must close it. `None` if it was not reserved.
    pub fn into_live(mut self) -> Option<LiveSlot> {
        match std::mem::replace(&mut self.state, SlotState::Released) {
            SlotState::Reserved(r) => Some(lock(&self.admission).complete(r)),
            SlotState::Released => None,
        }
    }

    /// Counts the connection against its user's limit, or returns the 429
    /// that refuses it (the slot is then aborted).
    pub fn bind_user(&mut self, user: &str) -> Result<(), (Refusal, Rejection)> {
        let SlotState::Reserved(r) = &self.state else {
            return Ok(());
        };
        let mut admission = lock(&self.admission);
        let Err(refusal) = admission.bind_user(r, user) else {
            return Ok(());
        };
        let rejection = refusal_response(&refusal, admission.retry_after());
        drop(admission);
        self.abort(AbortCause::Rejected);
        Err((refusal, rejection))
    }

    pub(crate) fn abort(&mut self, cause: AbortCause) {
        if let SlotState::Reserved(r) = std::mem::replace(&mut self.state, SlotState::Released) {
            lock(&self.admission).abort(r, cause);
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.state, SlotState::Released) {
            SlotState::Reserved(r) => lock(&self.admission).abort(r, AbortCause::Io),
            SlotState::Released => {}
        }
    }
}
