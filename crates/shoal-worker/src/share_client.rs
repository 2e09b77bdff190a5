//! The transfer behind [`crate::sharing::FromPeers`]: one file from the holders, through `shoal_share::fetch`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use shoal_models::PeerFile;
use shoal_share::{FetchOptions, FileSpec, Peer};

use crate::sharing::FromPeers;

/// How often the store hears the transfer's progress (it throttles further).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

pub(crate) fn fetch(
    from: &mut FromPeers,
    file: &PeerFile,
    dest: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), String> {
    let Some(size) = file.size else {
        return Err("the card gives no size for this file, which a transfer from peers needs".into());
    };
    let spec = FileSpec {
        sha256: file.sha256.clone(),
        size,
        path: dest.to_path_buf(),
    };
    let peers: Vec<Peer> = from
        .holders
        .iter()
        .flat_map(|(node, addrs)| {
            addrs.iter().map(move |addr| Peer {
                node: node.to_string(),
                addr: *addr,
            })
        })
        .collect();
    let done = AtomicU64::new(0);
    let finished = AtomicBool::new(false);
    let report = |bytes: u64, _total: u64| done.store(bytes, Ordering::Relaxed);
    let options = FetchOptions {
        token: from.token.clone(),
        tls: from.tls.clone(),
        progress: Some(&report),
        ..FetchOptions::default()
    };
    // The transfer's progress arrives on its own threads; the store's reporter lives on this one.
    let result = std::thread::scope(|scope| {
        let transfer = scope.spawn(|| {
            let result = shoal_share::fetch(&spec, &peers, &options);
            finished.store(true, Ordering::Release);
            result
        });
        while !finished.load(Ordering::Acquire) {
            progress(done.load(Ordering::Relaxed), size);
            std::thread::sleep(PROGRESS_EVERY);
        }
        transfer.join()
    });
    let result = result.map_err(|_| "the transfer thread panicked".to_owned())?;
    let dropped = match &result {
        Ok(report) => &report.dropped,
        Err(error) => error.dropped(),
    };
    // A holder is left out only when every address of it was dropped (one unreachable interface is not its fault).
    for peer in dropped {
        tracing::warn!(peer = %peer, "dropped from a model transfer");
    }
    for (node, addrs) in &from.holders {
        let name = node.to_string();
        let all_dropped = addrs
            .iter()
            .all(|addr| dropped.iter().any(|d| d.node == name && d.addr == *addr));
        if all_dropped && !from.dropped.contains(node) {
            from.dropped.push(*node);
        }
    }
    match result {
        Ok(report) => {
            progress(size, size);
            tracing::info!(
                file = %file.name,
                fetched = report.fetched_bytes,
                resumed = report.resumed_bytes,
                "model file fetched from peers"
            );
            Ok(())
        }
        Err(error) => Err(error.to_string()),
    }
}
