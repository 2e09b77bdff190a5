//! shoal's runner: the child process that holds one pipeline rank (SYSTEM.md §10.3–§10.4), the frames it speaks,
//! and the worker's side of it ([`local`]), which `shoal generate --stages K` uses to run a model as K processes.

mod chunks;
mod edges;
pub mod frame;
pub mod integrity;
pub mod local;
pub mod proto;
pub mod runner;
pub mod secure;

pub use local::{LocalPipeline, RunnerProcess};
pub use runner::run;
