//! One call's record in the making, as the gateway learns its fields
//! phase by phase (`dome_core::audit::call::CallFields`, which it derefs
//! to). It holds the call's room in the ring from the start, so a call that
//! runs always gets its record: `finish` commits it and waits until it is
//! durable (when the mode says so); a call abandoned on the way (client
//! gone, a task ending early) is committed when dropped.

use std::{
    ops::{Deref, DerefMut},
    sync::Arc,
    time::Instant,
};

pub use dome_core::audit::call::{CallFields, MAX_REASON_BYTES, phase};
pub use dome_core::audit::record::capped;

use super::record::Kind;
use super::trail::{Slot, Trail, Unavailable};

/// A call's record fields, with its room in the ring.
pub struct Call {
    /// `None`: the ring was full and `on_full = "drop"`; nothing is written.
    slot: Option<Slot>,
    /// When it arrived, for its total time.
    pub arrived: Instant,
    fields: CallFields,
}

impl Deref for Call {
    type Target = CallFields;
    fn deref(&self) -> &CallFields {
        &self.fields
    }
}

impl DerefMut for Call {
    fn deref_mut(&mut self) -> &mut CallFields {
        &mut self.fields
    }
}

impl Call {
    /// A new record for a call that arrived at `arrived` (Unix µs `time_us`)
    /// holding `slot`; its call id is drawn here.
    pub fn new(slot: Option<Slot>, kind: Kind, arrived: Instant, time_us: u64) -> Call {
        Call {
            slot,
            arrived,
            fields: CallFields::new(kind, time_us, rand::random()),
        }
    }

    /// Encodes and queues the record; returns the trail and ticket to wait
    /// on (`None` when the record was dropped for a full ring).
    pub fn commit(mut self) -> Option<(Arc<Trail>, u64)> {
        self.commit_now()
    }

    fn commit_now(&mut self) -> Option<(Arc<Trail>, u64)> {
        let slot = self.slot.take()?;
        let trail = slot.trail().clone();
        if self.phase_ns[phase::TOTAL] == 0 {
            self.fields.phase_ns[phase::TOTAL] = self.arrived.elapsed().as_nanos() as u64;
        }
        let mut scratch = Default::default();
        let record = self.fields.record(trail.node(), &mut scratch);
        let ticket = trail.commit(slot, &record)?;
        Some((trail, ticket))
    }

    /// Commits the record and waits until it is durable per the mode: the
    /// caller may be answered only after this returns `Ok`.
    pub async fn finish(self) -> Result<(), Unavailable> {
        match self.commit() {
            Some((trail, ticket)) => trail.durable(ticket).await,
            None => Ok(()),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Abandoned on the way: written as far as it got, without waiting.
        if self.slot.is_some() {
            self.fields.abandoned();
        }
        let _ = self.commit_now();
    }
}
