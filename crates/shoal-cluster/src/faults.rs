//! Fault injection for tests (a named mock of a lossy network): drop or duplicate a fraction of the event messages
//! this node sends (`up`, `down`) and receives. Nothing else can make zenoh's reliable transport lose a message on
//! loopback, and the transport layer of §5 exists precisely to survive that.
//!
//! Two targeted faults serve the stream registry's tests (§11.3): a *blackout* of incoming `down` messages while a
//! named file exists (the node then misses events it can only recover by range fetch, or by snapshot when the master
//! has pruned them: "learned only through a snapshot install"), and the loss of one chunk (`seq` = N), which the
//! registry must turn into `stream_incomplete`, never into silently garbled text.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Per mille of event messages dropped (sent and received).
    pub drop_permille: u32,
    /// Per mille of sent event messages sent twice.
    pub dup_permille: u32,
    /// While this file exists, every incoming `down` message is dropped.
    pub down_blackout: Option<PathBuf>,
    /// Chunks with this `seq` are not sent.
    pub drop_chunk_seq: Option<u32>,
    /// While this file exists, the master's durable commit fails as a full disk would make it fail.
    pub store_fail: Option<PathBuf>,
    rng: Arc<AtomicU64>,
}

impl Faults {
    pub fn new(drop_permille: u32, dup_permille: u32, seed: u64) -> Faults {
        Faults {
            drop_permille: drop_permille.min(1_000),
            dup_permille: dup_permille.min(1_000),
            down_blackout: None,
            drop_chunk_seq: None,
            store_fail: None,
            rng: Arc::new(AtomicU64::new(seed | 1)),
        }
    }

    /// From `SHOAL_FAULT_DROP_PERMILLE` and `SHOAL_FAULT_DUP_PERMILLE` (tests only; off when unset).
    pub fn from_env(seed: u64) -> Faults {
        let read = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        };
        let mut faults = Faults::new(
            read("SHOAL_FAULT_DROP_PERMILLE"),
            read("SHOAL_FAULT_DUP_PERMILLE"),
            seed,
        );
        faults.down_blackout = std::env::var_os("SHOAL_FAULT_DOWN_BLACKOUT_FILE").map(PathBuf::from);
        faults.drop_chunk_seq = std::env::var("SHOAL_FAULT_DROP_CHUNK_SEQ")
            .ok()
            .and_then(|v| v.parse().ok());
        faults.store_fail = std::env::var_os("SHOAL_FAULT_STORE_FAIL_FILE").map(PathBuf::from);
        if faults.active()
            || faults.down_blackout.is_some()
            || faults.drop_chunk_seq.is_some()
            || faults.store_fail.is_some()
        {
            tracing::warn!(
                drop_permille = faults.drop_permille,
                dup_permille = faults.dup_permille,
                down_blackout = ?faults.down_blackout,
                drop_chunk_seq = ?faults.drop_chunk_seq,
                store_fail = ?faults.store_fail,
                "fault injection is on: messages are dropped and duplicated on purpose"
            );
        }
        faults
    }

    pub fn active(&self) -> bool {
        self.drop_permille > 0 || self.dup_permille > 0
    }

    fn roll(&self, permille: u32) -> bool {
        if permille == 0 {
            return false;
        }
        // xorshift64: deterministic per seed, lock-free, good enough to pick messages.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x % 1_000) < u64::from(permille)
    }

    /// How many copies of an outgoing event message to send: 0 (dropped), 1, or 2 (duplicated).
    pub fn copies(&self) -> usize {
        if self.roll(self.drop_permille) {
            0
        } else if self.roll(self.dup_permille) {
            2
        } else {
            1
        }
    }

    /// Whether the store must fail its next durable commit (a full disk, which a test cannot cause portably).
    pub fn store_fails(&self) -> bool {
        self.store_fail.as_ref().is_some_and(|f| f.exists())
    }

    /// Whether incoming `down` messages are blacked out right now.
    pub fn blacked_out(&self) -> bool {
        self.down_blackout.as_ref().is_some_and(|f| f.exists())
    }

    /// Whether to drop an incoming event message.
    pub fn drop_incoming(&self) -> bool {
        self.roll(self.drop_permille)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default() {
        let faults = Faults::default();
        assert!((0..1_000).all(|_| faults.copies() == 1 && !faults.drop_incoming()));
    }

    #[test]
    fn rates_are_roughly_as_asked() {
        let faults = Faults::new(100, 100, 42);
        let copies: Vec<usize> = (0..10_000).map(|_| faults.copies()).collect();
        let dropped = copies.iter().filter(|&&c| c == 0).count();
        let duplicated = copies.iter().filter(|&&c| c == 2).count();
        assert!((700..1_300).contains(&dropped), "{dropped}");
        assert!((600..1_200).contains(&duplicated), "{duplicated}");
    }
}
