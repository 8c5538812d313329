//! Metrics of a running service, through `prometheus-client`: OpenMetrics text to a scraper
//! that asks for it (Prometheus does, in `Accept`), the Prometheus text format 0.0.4 otherwise
//! (`curl`, `promtool check metrics`).
//!
//! A service builds a [`Registry`] with [`registry`] (which already holds the process's own
//! figures: CPU seconds, resident memory, open and allowed file descriptors, start time, read
//! from `/proc` at each scrape), registers its metric families in it, then hands it to [`serve`]
//! on a listener of its own: metrics are off unless an operator gives a listen address, and never
//! share a port with the service's API. No secret or personal data goes into a label.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
pub use prometheus_client::registry::Registry;

/// The crate services use for their metric types (one version for all).
pub use prometheus_client;

/// The content type of an OpenMetrics answer.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of a Prometheus text answer.
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text.
    OpenMetrics,
    /// The Prometheus text format 0.0.4.
    PrometheusText,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub fn accepted(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::PrometheusText,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::PrometheusText => PROMETHEUS_TEXT,
        }
    }
}

/// Why the metrics listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The address does not parse or cannot be bound.
    #[error("metrics listener on {address}: {source}")]
    Listen {
        /// What was asked.
        address: String,
        /// Why not.
        source: std::io::Error,
    },
}

/// A registry with the process collector in it.
pub fn registry() -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector));
    registry
}

/// The registry's metrics in `format`.
pub fn encode(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, registry)?,
        Format::PrometheusText => prometheus_client::encoding::prometheus_text::encode(&mut text, registry)?,
    }
    Ok(text)
}

/// Binds the metrics listener (`host:port`); a clear error when it cannot.
pub async fn bind(address: &str) -> Result<tokio::net::TcpListener, TelemetryError> {
    tokio::net::TcpListener::bind(address).await.map_err(|source| TelemetryError::Listen { address: address.to_string(), source })
}

/// A metrics listener running in its own task; dropping it stops the listener.
#[derive(Debug)]
pub struct Listening {
    /// Where it listens (the port chosen when the address asked for 0).
    pub address: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `address` and serves `registry` there until the returned [`Listening`] is dropped.
pub async fn start(address: &str, registry: Registry) -> Result<Listening, TelemetryError> {
    let listener = bind(address).await?;
    let bound = listener.local_addr().map_err(|source| TelemetryError::Listen { address: address.to_string(), source })?;
    Ok(Listening { address: bound, task: tokio::spawn(serve(listener, Arc::new(registry))) })
}

/// Serves `GET /metrics` (and nothing else) on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let registry = registry.clone();
            let format = Format::accepted(headers.get(header::ACCEPT).and_then(|value| value.to_str().ok()));
            async move { answer(&registry, format) }
        }),
    );
    if let Err(err) = axum::serve(listener, app).await {
        tracing::warn!("metrics listener stopped: {err}");
    }
}

fn answer(registry: &Registry, format: Format) -> Response {
    match encode(registry, format) {
        Ok(text) => ([(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()))], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "metrics could not be encoded").into_response(),
    }
}

/// The process's own figures, read at each scrape (Linux `/proc`).
#[derive(Debug)]
struct ProcessCollector;

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on every Linux ABI we run on).
const TICKS_PER_SECOND: f64 = 100.0;

/// From `/proc/self/stat`: (CPU seconds in user and kernel mode, start time in ticks after boot).
fn cpu_and_start() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name is in parentheses and may hold spaces: fields count from after it.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the man page, so field N is fields[N - 3].
    let ticks = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(((ticks(14)? + ticks(15)?) as f64 / TICKS_PER_SECOND, ticks(22)?))
}

fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat").ok()?.lines().find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits.lines().find(|line| line.starts_with("Max open files"))?.split_whitespace().nth(3)?.parse().ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if let Some((cpu, start_ticks)) = cpu_and_start() {
            let counter = ConstCounter::new(cpu);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "CPU time of the process in user and kernel mode, in seconds",
                None,
                counter.metric_type(),
            )?)?;
            if let Some(boot) = boot_time() {
                let gauge = ConstGauge::new(boot as f64 + start_ticks as f64 / TICKS_PER_SECOND);
                gauge.encode(encoder.encode_descriptor(
                    "process_start_time_seconds",
                    "When the process started, Unix seconds",
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        for (name, help, value) in [
            ("process_resident_memory_bytes", "Resident memory of the process, in bytes", resident_bytes()),
            ("process_open_fds", "File descriptors the process holds open", open_fds()),
            ("process_max_fds", "The process's limit on open file descriptors", max_fds()),
        ] {
            if let Some(value) = value {
                let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_figures_are_read_and_plausible() {
        let text = encode(&registry(), Format::OpenMetrics).unwrap();
        let value = |name: &str| -> f64 {
            let line = text.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("{name} in {text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1_000_000.0, "{text}");
        assert!(value("process_open_fds") >= 3.0, "{text}");
        assert!(value("process_max_fds") >= value("process_open_fds"), "{text}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(started <= now + 1.0 && started > now - 3600.0, "started {started}, now {now}");
        assert!(text.contains("process_cpu_seconds_total "), "a counter ends in _total: {text}");
        assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
    }

    #[tokio::test]
    async fn the_listener_serves_metrics_and_nothing_else() {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(listener, Arc::new(registry())));
        let client = reqwest::Client::new();
        let answer = client.get(format!("http://{address}/metrics")).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers()["content-type"], PROMETHEUS_TEXT, "without Accept: the Prometheus text format");
        let text = answer.text().await.unwrap();
        assert!(text.contains("process_resident_memory_bytes") && !text.contains("# EOF"), "{text}");
        let scraper = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let answer = client.get(format!("http://{address}/metrics")).header("accept", scraper).send().await.unwrap();
        assert_eq!(answer.headers()["content-type"], OPENMETRICS, "what Prometheus asks for");
        assert!(answer.text().await.unwrap().ends_with("# EOF\n"));
        let other = client.get(format!("http://{address}/")).send().await.unwrap();
        assert_eq!(other.status(), 404);
        let post = client.post(format!("http://{address}/metrics")).send().await.unwrap();
        assert_eq!(post.status(), 405);
        task.abort();
    }

    #[tokio::test]
    async fn a_taken_or_bad_address_is_a_clear_error() {
        let taken = bind("127.0.0.1:0").await.unwrap();
        let address = taken.local_addr().unwrap().to_string();
        let err = bind(&address).await.unwrap_err().to_string();
        assert!(err.starts_with(&format!("metrics listener on {address}:")), "{err}");
        assert!(bind("not an address").await.is_err());
    }
}
