//! Task contents in transit (issue 15): the API node keeps each open stream's full request on its [`PromptShelf`]
//! (memory only) and answers rank 0's [`PromptRequest`] on `t/<api node>/prompt`; rank 0's worker fetches with
//! [`PromptRoute::fetch`]. Neither side passes the content through the node loop, the log or any disk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use shoal_net::keys;
use shoal_net::zenoh::query::{ConsolidationMode, Query, Queryable};
use shoal_net::zenoh::sample::Locality;
use shoal_net::zenoh::{Session, Wait};
use shoal_net::{Counters, decode_counted};
use shoal_types::NodeId;
use shoal_types::codec;
use shoal_types::ids::CommandId;
use shoal_types::params::GenerationParams;
use shoal_types::wire::{PromptReply, PromptRequest};

/// At most this many requests' contents are held at once on one API node.
pub const MAX_HELD_PROMPTS: usize = 16_384;
/// At most this many bytes of encoded requests are held at once on one API node (a request is at most 4 MiB).
pub const MAX_HELD_PROMPT_BYTES: usize = 1 << 30;
/// Prompt queries waiting for the answering thread; more are dropped and counted (rank 0 asks again).
pub const PROMPT_QUERIES_QUEUED: usize = 64;
/// How long rank 0 waits for the API node's answer to one fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// The API node holds as much content as its limits allow.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("this node holds {held} requests ({bytes} bytes) in flight, its limit; try again shortly")]
pub struct ShelfFull {
    pub held: usize,
    pub bytes: usize,
}

/// Why a fetch brought no content.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    #[error("the API node holds no content for the command")]
    Missing,
    #[error("no answer: {0}")]
    Unanswered(String),
}

struct Held {
    salt: [u8; 16],
    params: Arc<GenerationParams>,
    bytes: usize,
}

#[derive(Default)]
struct Shelf {
    held: HashMap<CommandId, Held>,
    bytes: usize,
}

/// The contents of this node's open streams, by command id.
#[derive(Clone, Default)]
pub struct PromptShelf {
    inner: Arc<Mutex<Shelf>>,
}

impl PromptShelf {
    fn lock(&self) -> MutexGuard<'_, Shelf> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds `params` (encoded size `bytes`) for `command_id` until [`Self::release`].
    pub fn hold(
        &self,
        command_id: CommandId,
        salt: [u8; 16],
        params: Arc<GenerationParams>,
        bytes: usize,
    ) -> Result<(), ShelfFull> {
        let mut shelf = self.lock();
        if shelf.held.len() >= MAX_HELD_PROMPTS || shelf.bytes.saturating_add(bytes) > MAX_HELD_PROMPT_BYTES {
            return Err(ShelfFull {
                held: shelf.held.len(),
                bytes: shelf.bytes,
            });
        }
        if let Some(old) = shelf.held.insert(command_id, Held { salt, params, bytes }) {
            shelf.bytes = shelf.bytes.saturating_sub(old.bytes);
        }
        shelf.bytes = shelf.bytes.saturating_add(bytes);
        Ok(())
    }

    /// Drops the content of `command_id` (its stream ended).
    pub fn release(&self, command_id: &CommandId) {
        let mut shelf = self.lock();
        if let Some(old) = shelf.held.remove(command_id) {
            shelf.bytes = shelf.bytes.saturating_sub(old.bytes);
        }
    }

    /// (requests, bytes) held now.
    pub fn usage(&self) -> (usize, usize) {
        let shelf = self.lock();
        (shelf.held.len(), shelf.bytes)
    }

    fn get(&self, command_id: &CommandId) -> Option<([u8; 16], Arc<GenerationParams>)> {
        self.lock().held.get(command_id).map(|h| (h.salt, h.params.clone()))
    }
}

/// Both ends of the content transfer on one node.
#[derive(Clone)]
pub(crate) struct PromptRoute {
    pub(crate) session: Session,
    pub(crate) ns: String,
    pub(crate) node: NodeId,
    pub(crate) shelf: PromptShelf,
    pub(crate) counters: Arc<crate::NetCounters>,
}

impl PromptRoute {
    /// Fetches the content of `command_id` from the API node `origin` (from this node's own shelf when it is this
    /// node). Blocks for up to [`FETCH_TIMEOUT`]: call it off any loop that must not wait.
    pub(crate) fn fetch(
        &self,
        origin: NodeId,
        command_id: CommandId,
    ) -> Result<([u8; 16], GenerationParams), FetchError> {
        if origin == self.node {
            return self
                .shelf
                .get(&command_id)
                .map(|(salt, params)| (salt, (*params).clone()))
                .ok_or(FetchError::Missing);
        }
        let request = PromptRequest {
            command_id,
            requester: self.node,
        };
        let bytes = codec::encode(&request).map_err(|e| FetchError::Unanswered(e.to_string()))?;
        let key = keys::prompt(&self.ns, origin);
        let replies = self
            .session
            .get(key.clone())
            .payload(bytes)
            .consolidation(ConsolidationMode::None)
            .timeout(FETCH_TIMEOUT)
            .wait()
            .map_err(|e| FetchError::Unanswered(e.to_string()))?;
        while let Ok(reply) = replies.recv() {
            let Ok(sample) = reply.result() else { continue };
            let bytes = sample.payload().to_bytes();
            match decode_counted::<PromptReply>(&bytes, &key, &self.counters.prompt) {
                Some(PromptReply::Found { salt, params }) => return Ok((salt, *params)),
                Some(PromptReply::Missing) => return Err(FetchError::Missing),
                None => continue,
            }
        }
        Err(FetchError::Unanswered("timed out".into()))
    }
}

/// `t/<this node>/prompt`: queries are answered on a thread of their own, never in zenoh's callback: a reply to a
/// requester whose link stalls may wait for room in its queue, and a callback that waits stalls every other message
/// this node receives on zenoh's receive threads.
pub(crate) fn declare(route: &PromptRoute) -> Result<Queryable<()>, crate::ClusterError> {
    let key = keys::prompt(&route.ns, route.node);
    let (queries, waiting) = std::sync::mpsc::sync_channel::<Query>(PROMPT_QUERIES_QUEUED);
    let shelf = route.shelf.clone();
    let counters = route.counters.clone();
    let reply_key = key.clone();
    std::thread::Builder::new()
        .name("shoal-prompts".into())
        // Ends when the queryable (which owns the sender) is undeclared.
        .spawn(move || {
            for query in waiting {
                answer(&shelf, &counters, &reply_key, query);
            }
        })?;
    let counters = route.counters.clone();
    Ok(route
        .session
        .declare_queryable(key)
        .allowed_origin(Locality::Remote)
        .callback(move |query: Query| {
            // Full: rank 0's fetch times out and tries again (it makes several attempts).
            if let Err(std::sync::mpsc::TrySendError::Full(_)) = queries.try_send(query) {
                Counters::bump(&counters.prompt.dropped_full);
            }
        })
        .wait()?)
}

fn answer(shelf: &PromptShelf, counters: &crate::NetCounters, key: &str, query: Query) {
    let Some(bytes) = query.payload().map(|p| p.to_bytes().into_owned()) else {
        Counters::bump(&counters.prompt.malformed);
        return;
    };
    let Some(request) = decode_counted::<PromptRequest>(&bytes, key, &counters.prompt) else {
        return;
    };
    let reply = match shelf.get(&request.command_id) {
        Some((salt, params)) => {
            tracing::debug!(command = %request.command_id, to = %request.requester, "sending a request's content");
            PromptReply::Found {
                salt,
                params: Box::new((*params).clone()),
            }
        }
        None => PromptReply::Missing,
    };
    let Ok(bytes) = codec::encode(&reply) else { return };
    if let Err(error) = query.reply(key, bytes).wait() {
        tracing::debug!(%error, "prompt reply failed");
    }
}
