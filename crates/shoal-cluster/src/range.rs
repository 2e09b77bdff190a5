//! The master's answer to a range query (§5.4), from its replica log.

use shoal_core::indexer::{RANGE_MAX_EVENTS, range_replies};
use shoal_store::{Store, StoreError};
use shoal_types::wire::{RangeReply, RangeRequest};

/// `Events`… then `End`, or one of `Diverged` / `Pruned`. The chain check: the requester's `after` must be a position
/// of this master's history (same idx, same session), else its State diverged.
pub(crate) fn answer(store: &Store, request: RangeRequest) -> Vec<RangeReply> {
    let head = store.pos();
    let after = request.after;
    match store.pos_at(after.idx) {
        Ok(Some(pos)) if pos == after => {}
        // Past the head, or another session at that idx.
        Ok(_) => return vec![RangeReply::Diverged],
        Err(StoreError::Pruned { .. }) => return vec![RangeReply::Pruned],
        Err(error) => {
            tracing::warn!(%error, "range query: log read failed");
            return Vec::new(); // the requester retries
        }
    }
    let max = request.max.min(RANGE_MAX_EVENTS) as usize;
    let events = match store.events_after(after.idx, max) {
        Ok(events) => events,
        Err(StoreError::Pruned { .. }) => return vec![RangeReply::Pruned],
        Err(error) => {
            tracing::warn!(%error, "range query: log read failed");
            return Vec::new();
        }
    };
    range_replies(&events, head.idx)
}
