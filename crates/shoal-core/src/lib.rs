//! shoal's pure core: every decision of the system as a function over data (SYSTEM.md §1).
//!
//! No IO, no clocks, no randomness, no async runtime: time and ids are arguments. The shells (store, net, master,
//! worker, api) feed inputs in and carry outputs out.

pub mod apply;
pub mod election;
pub mod fetch;
pub mod follower;
pub mod indexer;
pub mod invariants;
pub mod master;
pub mod node;
pub mod outbox;
pub mod placement;
pub mod prompts;
pub mod readiness;
pub mod registry;
pub mod runner_health;
pub mod snapshot;
#[cfg(feature = "testing")]
pub mod testing;
pub mod worker;

pub use apply::{ApplyError, apply, apply_in_place};
