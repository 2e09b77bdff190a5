//! The CLI's download progress bars (on stderr, only when it is a terminal): one bar per model this node fetches,
//! fed by every report of the worker's downloads. State gets the same reports, throttled (§10.2).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use shoal_types::ids::ModelId;
use shoal_types::model::DownloadProgress;

pub fn bars() -> Option<shoal_worker::ProgressHook> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let multi = MultiProgress::new();
    let bars: Mutex<HashMap<ModelId, ProgressBar>> = Mutex::new(HashMap::new());
    let style = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    Some(Arc::new(move |model: &ModelId, progress: &DownloadProgress| {
        let mut bars = bars.lock().unwrap_or_else(|e| e.into_inner());
        let bar = bars.entry(model.clone()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new(0).with_style(style.clone()));
            bar.set_message(format!("fetching {model}"));
            bar
        });
        match progress {
            DownloadProgress::Pending => {}
            DownloadProgress::Ongoing { done, total } => {
                bar.set_length(*total);
                bar.set_position(*done);
            }
            DownloadProgress::Completed { total } => {
                bar.set_length(*total);
                bar.set_position(*total);
                bar.finish_with_message(format!("{model} verified"));
                bars.remove(model);
            }
            DownloadProgress::Failed { error } => {
                bar.abandon_with_message(format!("{model}: {error}"));
                bars.remove(model);
            }
            DownloadProgress::Gone => {
                bar.abandon_with_message(format!("{model}: its files are gone"));
                bars.remove(model);
            }
        }
    }))
}
