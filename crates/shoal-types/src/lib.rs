//! shoal's data model (SYSTEM.md §2–§7): identifiers, State and its durable events, commands, chunks, model cards,
//! the messages nodes exchange, and the versioned compact codec they travel in.
//!
//! Everything here is plain data. Behaviour over it (`apply`, placement, the election choice, ...) lives in
//! `shoal-core`.

mod bounded;
pub mod card;
pub mod chunk;
pub mod codec;
pub mod command;
pub mod event;
pub mod http;
pub mod ids;
pub mod model;
pub mod params;
pub mod state;
pub mod wire;

pub use card::{Backend, ModelCard};
pub use chunk::Chunk;
pub use codec::{DecodeError, EncodeError, decode, encode};
pub use command::{Command, CommandEnvelope, PlacementError, RejectReason};
pub use event::{Event, IndexedEvent};
pub use ids::{CommandId, DeploymentId, InstanceId, ModelId, NodeId, Origin, Pos, RunnerId, SessionId, TaskId};
pub use model::*;
pub use params::{Constraint, GenerationParams, Message, Role};
pub use state::{STATE_SCHEMA, State};
