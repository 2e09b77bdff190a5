//! Model files shared with peers (issue 18): this node's file server, what it offers, and the fetch from peers that
//! `downloads` runs when `shoal_core::fetch::plan` says so.
//!
//! The server offers the verified weights files this node's worker holds (`Shell::gguf`), by sha256. Who may read a
//! file: with a cluster key, any node whose certificate the cluster CA signed (the TLS handshake proves it); without
//! a key, a request must carry the token of an instance of a model made of that file (State's instance token, which
//! only members of the cluster see). The offer is rebuilt from the worker's files and State on every plan step.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use shoal_models::{PeerFetcher, PeerFile};
use shoal_share::{FileServer, ServerOptions, ShareTls};
use shoal_types::ids::ModelId;
use shoal_types::{NodeId, State};

/// What the file server offers: the path of each sha256, and the tokens that may read it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Offer {
    files: HashMap<String, PathBuf>,
    tokens: HashMap<String, Vec<String>>,
}

impl Offer {
    /// The offer for `held` (model → verified weights file) as State describes those models: each file's sha256
    /// from the card, the hex tokens of every instance of a model made of it.
    pub(crate) fn from_state(state: &State, held: &BTreeMap<ModelId, PathBuf>) -> Offer {
        let mut offer = Offer::default();
        for (model, path) in held {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let card = state
                .model_cards
                .get(model)
                .map(|c| c.as_ref())
                .or_else(|| state.instances.values().map(|i| &i.model).find(|c| c.id == *model));
            let Some(sha256) = card.and_then(|c| c.sources.iter().find_map(|s| s.sha256.get(name))) else {
                continue;
            };
            offer.files.insert(sha256.clone(), path.clone());
            let tokens = offer.tokens.entry(sha256.clone()).or_default();
            for instance in state.instances.values().filter(|i| i.model.id == *model) {
                tokens.push(hex::encode(instance.token.0));
            }
        }
        offer
    }
}

/// This node's side of sharing: its file server and the offer it reads.
pub(crate) struct Sharing {
    offer: Arc<RwLock<Offer>>,
    server: FileServer,
    tls: Option<ShareTls>,
}

impl Sharing {
    /// Starts the file server on `bind` (port 0: the OS chooses).
    pub(crate) fn start(bind: SocketAddr, tls: Option<ShareTls>) -> std::io::Result<Sharing> {
        Self::start_inner(bind, tls)
    }

    fn start_inner(bind: SocketAddr, tls: Option<ShareTls>) -> std::io::Result<Sharing> {
        let offer = Arc::new(RwLock::new(Offer::default()));
        let files = offer.clone();
        let catalogue = Arc::new(move |sha256: &str| {
            let offer = files.read().unwrap_or_else(|e| e.into_inner());
            offer.files.get(sha256).cloned()
        });
        let tokens = offer.clone();
        let keyed = tls.is_some();
        let authorise = Arc::new(move |token: &str, sha256: &str| {
            // With a key the certificate proved membership already.
            keyed || {
                let offer = tokens.read().unwrap_or_else(|e| e.into_inner());
                offer.tokens.get(sha256).is_some_and(|t| t.iter().any(|t| t == token))
            }
        });
        let options = ServerOptions::new(catalogue, authorise).with_tls(tls.clone());
        // Started from a thread of lower priority, whose niceness the server's threads inherit.
        let server = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    lower_priority();
                    FileServer::start(bind, options)
                })
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the file server's start panicked")))
        })?;
        Ok(Sharing { offer, server, tls })
    }

    pub(crate) fn port(&self) -> u16 {
        self.server.local_addr().port()
    }

    pub(crate) fn stats(&self) -> shoal_share::ServerStats {
        self.server.stats()
    }

    /// Replaces the offer when it changed.
    pub(crate) fn offer(&self, offer: Offer) {
        let mut current = self.offer.write().unwrap_or_else(|e| e.into_inner());
        if *current != offer {
            *current = offer;
        }
    }

    pub(crate) fn tls(&self) -> Option<ShareTls> {
        self.tls.clone()
    }
}

/// How much nicer than the node's other threads a bulk transfer's threads run (Linux niceness; higher is lower
/// priority): on a small machine hashing and copying gigabytes would otherwise take CPU time from the runners'
/// decode steps and the node's control loop (BENCHMARKS.md, "Model sharing").
pub const BULK_NICENESS: i32 = 10;

/// Lowers the calling thread's CPU priority to [`BULK_NICENESS`]; threads it starts inherit it. A failure only logs.
pub(crate) fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), BULK_NICENESS) {
        tracing::debug!(%error, "cannot lower a bulk transfer thread's priority");
    }
}

/// A fetch from the holders `shoal_core::fetch::plan` named, proving `token` (an instance of the model this node
/// runs a shard of). Records the peers a transfer dropped, so the worker leaves them out for a while.
pub(crate) struct FromPeers {
    pub(crate) holders: Vec<(NodeId, Vec<SocketAddr>)>,
    pub(crate) token: String,
    pub(crate) tls: Option<ShareTls>,
    pub(crate) dropped: Vec<NodeId>,
}

impl PeerFetcher for FromPeers {
    fn fetch(&mut self, file: &PeerFile, dest: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<(), String> {
        crate::share_client::fetch(self, file, dest, progress)
    }
}
