//! `GET /metrics`: every source of the node (the cluster, the stream registry, and whatever the binary adds, such as
//! its worker's runners) is a `prometheus-client` [`Collector`] in one [`Registry`], written by the one encoder.
//!
//! Collectors read their values at scrape time (the cluster's position, the registry's counters, a runner's resident
//! memory); the latency histograms are live `prometheus-client` histograms the registry updates as chunks arrive.
//! Counter names are registered without `_total`: the encoder adds it.

use std::fmt;
use std::sync::Arc;

use axum::extract::State as AxumState;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use shoal_cluster::ClusterHandle;

use crate::Api;
use crate::streams::Streams;

/// Label pairs of one sample.
pub type Labels = Vec<(&'static str, String)>;

/// Writes one gauge family (`rows` of labels and value); a single row without labels is a plain gauge.
pub fn write_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> Result<(), fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
    for (labels, value) in rows {
        let gauge = ConstGauge::new(*value);
        if labels.is_empty() {
            gauge.encode(family.encode_family(&Vec::<(&str, String)>::new())?)?;
        } else {
            gauge.encode(family.encode_family(labels)?)?;
        }
    }
    Ok(())
}

/// Writes one counter family; `name` without `_total`.
pub fn write_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn one<T>(value: T) -> [(Labels, T); 1] {
    [(Vec::new(), value)]
}

/// The cluster's position and network counters.
struct ClusterCollector(ClusterHandle);

impl fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterCollector")
    }
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let status = self.0.view().status;
        let idx = status.pos.idx;
        write_gauge(
            &mut encoder,
            "shoal_state_idx",
            "Index of the last applied event",
            &one(idx),
        )?;
        write_gauge(
            &mut encoder,
            "shoal_ready",
            "1 once the node follows a master and has caught up",
            &one(i64::from(status.ready)),
        )?;
        write_gauge(
            &mut encoder,
            "shoal_is_master",
            "1 on the elected master",
            &one(i64::from(status.role == "master")),
        )?;
        let mut rows = Vec::new();
        for (key, c) in self.0.counters().snapshot() {
            for (outcome, value) in [
                ("received", c.received),
                ("dropped_full", c.dropped_full),
                ("malformed", c.malformed),
                ("incompatible", c.incompatible),
                ("oversized", c.oversized),
            ] {
                rows.push((vec![("key", key.to_string()), ("outcome", outcome.to_string())], value));
            }
        }
        write_counter(
            &mut encoder,
            "shoal_net_messages",
            "Network messages by key and outcome",
            &rows,
        )?;
        write_counter(
            &mut encoder,
            "shoal_chunks_unrouted",
            "Chunks for an API node this node has no route to",
            &one(self.0.chunks_unrouted()),
        )
    }
}

/// The stream registry's counters and latency histograms.
struct StreamsCollector(Arc<Streams>);

impl fmt::Debug for StreamsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamsCollector")
    }
}

impl Collector for StreamsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = self.0.stats();
        write_gauge(
            &mut encoder,
            "shoal_streams_open",
            "Client streams open on this node",
            &one(i64::try_from(stats.open).unwrap_or(i64::MAX)),
        )?;
        write_counter(
            &mut encoder,
            "shoal_streams_finished",
            "Streams that ended with their final chunk",
            &one(stats.finished),
        )?;
        let closes: Vec<_> = stats
            .closes
            .iter()
            .map(|(reason, n)| (vec![("reason", reason.to_string())], *n))
            .collect();
        write_counter(
            &mut encoder,
            "shoal_stream_closes",
            "Streams closed before their final chunk, by reason",
            &closes,
        )?;
        write_counter(
            &mut encoder,
            "shoal_chunks_unknown",
            "Chunks for no open stream (dropped)",
            &one(stats.chunks_unknown),
        )?;
        write_counter(
            &mut encoder,
            "shoal_stream_tokens",
            "Chunks delivered to clients",
            &one(stats.tokens),
        )?;
        let ttft = encoder.encode_descriptor(
            "shoal_time_to_first_token_seconds",
            "From a request's registration to its first chunk",
            None,
            self.0.ttft.metric_type(),
        )?;
        self.0.ttft.encode(ttft)?;
        let inter = encoder.encode_descriptor(
            "shoal_inter_token_seconds",
            "Between consecutive chunks of a stream",
            None,
            self.0.inter_token.metric_type(),
        )?;
        self.0.inter_token.encode(inter)
    }
}

/// The node's metrics registry.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// The cluster's and the registry's collectors, plus the binary's own (its worker, say).
    pub fn new(cluster: ClusterHandle, streams: Arc<Streams>, extra: Vec<Box<dyn Collector>>) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ClusterCollector(cluster)));
        registry.register_collector(Box::new(StreamsCollector(streams)));
        for collector in extra {
            registry.register_collector(collector);
        }
        Metrics { registry }
    }

    /// The exposition text (OpenMetrics, which Prometheus reads).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

pub async fn metrics(AxumState(api): AxumState<Api>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        api.metrics.render(),
    )
        .into_response()
}
