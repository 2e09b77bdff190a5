//! The store's decisions as small pure functions: when to checkpoint, which checkpoints and log entries to drop,
//! where the log starts after recovery, whether a range can be served. The [`crate::Store`] shell only carries them
//! out, so each rule is unit-tested here without a database.

use std::time::Duration;

use shoal_types::State;

use crate::StoreConfig;

/// The idx the next appended event must carry (`pos.idx + 1`; the empty State is at −1, so 0).
pub fn next_idx(state: &State) -> u64 {
    u64::try_from(state.pos.idx.saturating_add(1)).unwrap_or(0)
}

/// A checkpoint is due after `checkpoint_every_events` applied events, or after `checkpoint_every` if anything
/// changed at all (§5.3): the count bounds the replay at start-up, the timer bounds it when the cluster is quiet.
pub fn checkpoint_due(cfg: &StoreConfig, events_since: u64, since_last: Duration) -> bool {
    events_since > 0 && (events_since >= cfg.checkpoint_every_events || since_last >= cfg.checkpoint_every)
}

/// The checkpoints to delete so that only the newest `keep` remain (`ascending` is sorted ascending). At least one
/// is always kept: the log before it may already be pruned.
pub fn checkpoints_to_drop(ascending: &[u64], keep: usize) -> &[u64] {
    let keep = keep.max(1);
    &ascending[..ascending.len().saturating_sub(keep)]
}

/// Log entries with `idx <= prune_through(..)` may be deleted: everything up to `retain` events before the newest
/// checkpoint. The retained window lets lagging followers catch up by range fetch instead of a snapshot, and lets
/// open fall back to an older checkpoint (`retain` ≥ the checkpoint spacing keeps that possible). `None`: nothing.
pub fn prune_through(newest_checkpoint: u64, retain: u64) -> Option<u64> {
    newest_checkpoint.checked_sub(retain)
}

/// Where the retained log starts after recovery: its first entry, or, when it is empty, the next idx to append.
/// Recovery deletes every entry after the recovered position, so the retained entries are `first..=pos.idx`.
pub fn recovered_log_start(first_entry: Option<u64>, next_idx: u64) -> u64 {
    first_entry.map_or(next_idx, |first| first.min(next_idx))
}

/// Checks that events after `after_idx` can be served from a log retained from `log_start`; returns the first idx
/// to read. An `after_idx` below −1 is treated as −1 (from the beginning).
pub fn range_start(after_idx: i64, log_start: u64) -> Result<u64, u64> {
    let start = u64::try_from(after_idx.saturating_add(1)).unwrap_or(0);
    if start < log_start { Err(log_start) } else { Ok(start) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> StoreConfig {
        StoreConfig {
            checkpoint_every_events: 10,
            checkpoint_every: Duration::from_secs(60),
            ..StoreConfig::default()
        }
    }

    #[test]
    fn checkpoint_due_by_count_or_time_but_never_when_unchanged() {
        let c = cfg();
        assert!(!checkpoint_due(&c, 0, Duration::from_secs(3600)), "nothing changed");
        assert!(!checkpoint_due(&c, 9, Duration::from_secs(59)));
        assert!(checkpoint_due(&c, 10, Duration::ZERO));
        assert!(checkpoint_due(&c, 1, Duration::from_secs(60)));
    }

    #[test]
    fn keeps_the_newest_checkpoints() {
        assert_eq!(checkpoints_to_drop(&[10, 20, 30], 2), &[10]);
        assert_eq!(checkpoints_to_drop(&[10, 20], 2), &[] as &[u64]);
        assert_eq!(checkpoints_to_drop(&[], 2), &[] as &[u64]);
        assert_eq!(
            checkpoints_to_drop(&[10, 20, 30], 0),
            &[10, 20],
            "the newest is always kept"
        );
    }

    #[test]
    fn prunes_only_beyond_the_retained_window() {
        assert_eq!(prune_through(150_000, 100_000), Some(50_000));
        assert_eq!(prune_through(100_000, 100_000), Some(0));
        assert_eq!(prune_through(99_999, 100_000), None);
        assert_eq!(
            prune_through(7, 0),
            Some(7),
            "retain 0 prunes through the checkpoint itself"
        );
    }

    #[test]
    fn log_start_after_recovery() {
        assert_eq!(recovered_log_start(Some(5), 20), 5);
        assert_eq!(
            recovered_log_start(None, 20),
            20,
            "an empty log starts at the next append"
        );
        assert_eq!(recovered_log_start(None, 0), 0);
    }

    #[test]
    fn range_start_refuses_pruned_ranges() {
        assert_eq!(range_start(-1, 0), Ok(0));
        assert_eq!(range_start(-7, 0), Ok(0), "below -1 means from the beginning");
        assert_eq!(range_start(9, 10), Ok(10));
        assert_eq!(range_start(8, 10), Err(10));
        assert_eq!(range_start(-1, 1), Err(1));
    }

    #[test]
    fn next_idx_of_the_empty_state_is_zero() {
        let mut s = State::empty();
        assert_eq!(next_idx(&s), 0);
        s.pos.idx = 41;
        assert_eq!(next_idx(&s), 42);
    }
}
