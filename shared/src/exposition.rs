//! What `GET /metrics` answers, for both daemons (`defect-agent run` and `model-updater run`).
//!
//! Each daemon registers its metrics in a `prometheus-client` [`Registry`], which encodes
//! OpenMetrics text. A scraper that asks for OpenMetrics (Prometheus does) gets it; every other
//! client (curl, `promtool check metrics`, older collectors) gets the classic Prometheus text
//! format 0.0.4, converted from the same encoding: counter families take their `_total` name,
//! `info` families become gauges named `…_info`, `unknown` becomes `untyped`, and the
//! OpenMetrics-only `# UNIT` and `# EOF` lines are left out.
//!
//! This module owns that content negotiation and conversion. It owns no metric and no HTTP
//! framework: each daemon registers its own metrics; [`crate::metrics_listener`] serves them.

use prometheus_client::registry::Registry;

/// Media type of OpenMetrics text, as a scraper asks for it in `Accept`.
const OPENMETRICS_MEDIA_TYPE: &str = "application/openmetrics-text";

/// The two text formats `/metrics` answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text.
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4.
    Prometheus,
}

impl Format {
    /// The format for a request's `Accept` header: OpenMetrics when the client accepts it with
    /// a non-zero quality, the classic format otherwise (also without the header).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let wants_openmetrics = accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next().unwrap_or_default();
                media.eq_ignore_ascii_case(OPENMETRICS_MEDIA_TYPE) && !parts.any(is_zero_quality)
            })
        });
        if wants_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub const fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Whether a media range parameter is `q=0` (the client refuses that type).
fn is_zero_quality(param: &str) -> bool {
    param.split_once('=').is_some_and(|(key, value)| {
        key.trim().eq_ignore_ascii_case("q") && value.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
    })
}

/// Why the metrics could not be encoded: a metric or collector failed to write itself.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode the metrics")]
pub struct EncodeError(#[source] std::fmt::Error);

/// The registry's metrics as text in `format`.
pub fn render(registry: &Registry, format: Format) -> Result<String, EncodeError> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).map_err(EncodeError)?;
    Ok(match format {
        Format::OpenMetrics => text,
        Format::Prometheus => to_prometheus_text(&text),
    })
}

/// Classic Prometheus text (format 0.0.4) from OpenMetrics text as `prometheus-client` writes
/// it: per family `# HELP`, `# TYPE`, maybe `# UNIT`, then the samples; no exemplars and no
/// `_created` samples (neither is used by our daemons).
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The `name text` of a `# HELP` line, held until its `# TYPE` line says the family's name.
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            push_help(&mut out, help.take());
            help = Some(rest);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.rsplit_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                _ => (name.to_owned(), "untyped"),
            };
            if let Some(held) = help.take() {
                let text = held.split_once(' ').map_or("", |(_, text)| text);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            push_help(&mut out, help.take());
            out.push_str(line);
            out.push('\n');
        }
    }
    push_help(&mut out, help);
    out
}

/// Writes a held `# HELP` line as it was (a family without a `# TYPE` line).
fn push_help(out: &mut String, help: Option<&str>) {
    if let Some(help) = help {
        out.push_str("# HELP ");
        out.push_str(help);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::metrics::info::Info;
    use prometheus_client::registry::Unit;

    use super::*;

    fn registry() -> Registry {
        let mut registry = Registry::with_prefix("demo");
        let frames: Counter = Counter::default();
        frames.inc_by(3);
        registry.register("frames", "Frames seen", frames);
        let bytes: Counter = Counter::default();
        bytes.inc_by(42);
        registry.register_with_unit("downloaded", "Bytes downloaded", Unit::Bytes, bytes);
        let depth: Gauge = Gauge::default();
        depth.set(2);
        registry.register("queue_depth", "Frames waiting", depth);
        let latency = Histogram::new([0.1, 1.0]);
        latency.observe(0.5);
        registry.register_with_unit("latency", "Latency", Unit::Seconds, latency);
        registry.register("build", "Build", Info::new(vec![("version", "1.2.3")]));
        registry
    }

    #[test]
    fn prometheus_asks_for_openmetrics_and_everyone_else_gets_the_classic_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Prometheus);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0, text/plain")),
            Format::Prometheus
        );
    }

    #[test]
    fn openmetrics_text_ends_with_eof_and_names_counter_families_without_total() {
        let text = render(&registry(), Format::OpenMetrics).expect("render");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE demo_frames counter\n"), "{text}");
        assert!(text.contains("demo_frames_total 3\n"), "{text}");
        assert!(
            text.contains("# UNIT demo_latency_seconds seconds\n"),
            "{text}"
        );
    }

    #[test]
    fn the_classic_format_names_counters_with_total_and_has_no_openmetrics_only_lines() {
        let text = render(&registry(), Format::Prometheus).expect("render");
        for expected in [
            "# HELP demo_frames_total Frames seen.\n# TYPE demo_frames_total counter\ndemo_frames_total 3\n",
            "# TYPE demo_downloaded_bytes_total counter\ndemo_downloaded_bytes_total 42\n",
            "# TYPE demo_queue_depth gauge\ndemo_queue_depth 2\n",
            "# TYPE demo_latency_seconds histogram\n",
            "demo_latency_seconds_bucket{le=\"1.0\"} 1\n",
            "# TYPE demo_build_info gauge\ndemo_build_info{version=\"1.2.3\"} 1\n",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        assert!(
            !text.contains("# UNIT") && !text.contains("# EOF"),
            "{text}"
        );
    }
}
