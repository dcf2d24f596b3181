//! Metrics exposition formats: the OpenMetrics text format (what `prometheus-client` encodes)
//! for scrapers that ask for it, and the classic Prometheus text format (0.0.4) for the rest.
//!
//! Every Meshara `/metrics` endpoint negotiates the same way, as the Go Prometheus client does:
//! a request whose `Accept` header prefers `application/openmetrics-text` (Prometheus itself
//! sends one) gets OpenMetrics, with its content type; any other request (`curl`, a classic
//! parser, `promtool check metrics`) gets the classic format, where a counter's `# TYPE` line
//! names the `_total` series, so that classic parsers read counters as counters and not as
//! untyped series without help text.
//!
//! ```
//! use meshara_core::exposition;
//!
//! let openmetrics = "# HELP jobs Jobs done.\n# TYPE jobs counter\njobs_total 3\n# EOF\n";
//! let (content_type, body) = exposition::negotiate(None, openmetrics.to_owned());
//! assert_eq!(content_type, exposition::CLASSIC_CONTENT_TYPE);
//! assert_eq!(body, "# HELP jobs_total Jobs done.\n# TYPE jobs_total counter\njobs_total 3\n");
//!
//! let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
//! let (content_type, _) = exposition::negotiate(Some(accept), openmetrics.to_owned());
//! assert_eq!(content_type, exposition::OPENMETRICS_CONTENT_TYPE);
//! ```

/// The content type of an OpenMetrics text body.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of a classic Prometheus text body.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a request with this `Accept` header value should get OpenMetrics: it lists
/// `application/openmetrics-text` with a quality above 0 and at least that of any classic
/// (`text/plain`) or wildcard range. No header means the classic format.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    let mut openmetrics = 0.0f32;
    let mut other = 0.0f32;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let mut q = 1.0f32;
        for param in parts {
            if let Some((name, value)) = param.split_once('=') {
                if name.trim().eq_ignore_ascii_case("q") {
                    q = value.trim().parse().unwrap_or(0.0);
                }
            }
        }
        if !q.is_finite() {
            continue;
        }
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" | "text/*" | "*/*" => other = other.max(q),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= other
}

/// The content type and body to answer a scrape with, from an OpenMetrics text body and the
/// request's `Accept` header value.
pub fn negotiate(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    if wants_openmetrics(accept) {
        (OPENMETRICS_CONTENT_TYPE, openmetrics)
    } else {
        (CLASSIC_CONTENT_TYPE, to_classic(&openmetrics))
    }
}

/// Rewrites an OpenMetrics text body into the classic Prometheus text format: a counter's
/// `# HELP` and `# TYPE` lines name its `_total` series, `info` and `stateset` families become
/// gauges (an info family's series are named `_info`), `# UNIT` and `# EOF` lines go, and so do
/// counters' `_created` series and exemplars, which the classic format cannot carry. Help text
/// keeps only the escapes the classic format knows (`\\` and `\n`).
pub fn to_classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The family being read: its OpenMetrics name and type.
    let mut family: Option<(String, String)> = None;
    let mut pending_help: Option<(String, String)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name.to_owned(), help.replace("\\\"", "\"")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (classic_name, classic_kind) = match kind {
                "counter" if !name.ends_with("_total") => (format!("{name}_total"), "counter"),
                "counter" => (name.to_owned(), "counter"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                "info" => (format!("{name}_info"), "gauge"),
                "stateset" => (name.to_owned(), "gauge"),
                "gaugehistogram" => (name.to_owned(), "histogram"),
                _ => (name.to_owned(), "untyped"),
            };
            if let Some((help_name, help)) = pending_help.take() {
                if help_name == name {
                    out.push_str(&format!("# HELP {classic_name} {help}\n"));
                }
            }
            out.push_str(&format!("# TYPE {classic_name} {classic_kind}\n"));
            family = Some((name.to_owned(), kind.to_owned()));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            // `# UNIT`, `# EOF` and other comments.
            continue;
        }
        if let Some((name, kind)) = &family {
            if kind == "counter" && sample_name(line) == format!("{name}_created") {
                continue;
            }
        }
        out.push_str(without_exemplar(line));
        out.push('\n');
    }
    out
}

/// The metric name of a sample line (up to its labels or value).
fn sample_name(line: &str) -> &str {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    &line[..end]
}

/// A sample line without its exemplar (` # {…} value`), which may follow the value.
fn without_exemplar(line: &str) -> &str {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '#' if !in_quotes && line[..i].ends_with(' ') => return line[..i].trim_end(),
            _ => {}
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_choose_the_format() {
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(wants_openmetrics(Some("application/openmetrics-text")));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(Some(
            "text/plain;version=0.0.4,application/openmetrics-text;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text;q=nan"
        )));
    }

    #[test]
    fn openmetrics_becomes_classic_text() {
        let openmetrics = concat!(
            "# HELP app_requests Requests by \\\"kind\\\".\n",
            "# TYPE app_requests counter\n",
            "app_requests_total{kind=\"a # b\"} 2 # {trace=\"x\"} 1.0\n",
            "app_requests_created{kind=\"a # b\"} 1700000000.0\n",
            "# HELP app_up Up.\n",
            "# TYPE app_up gauge\n",
            "# UNIT app_up seconds\n",
            "app_up 1\n",
            "# HELP app_latency_seconds Latency.\n",
            "# TYPE app_latency_seconds histogram\n",
            "app_latency_seconds_sum 0.5\n",
            "app_latency_seconds_count 2\n",
            "app_latency_seconds_bucket{le=\"0.1\"} 1\n",
            "app_latency_seconds_bucket{le=\"+Inf\"} 2\n",
            "# HELP app_build Build.\n",
            "# TYPE app_build info\n",
            "app_build_info{version=\"1\"} 1\n",
            "# EOF\n",
        );
        let classic = to_classic(openmetrics);
        assert_eq!(
            classic,
            concat!(
                "# HELP app_requests_total Requests by \"kind\".\n",
                "# TYPE app_requests_total counter\n",
                "app_requests_total{kind=\"a # b\"} 2\n",
                "# HELP app_up Up.\n",
                "# TYPE app_up gauge\n",
                "app_up 1\n",
                "# HELP app_latency_seconds Latency.\n",
                "# TYPE app_latency_seconds histogram\n",
                "app_latency_seconds_sum 0.5\n",
                "app_latency_seconds_count 2\n",
                "app_latency_seconds_bucket{le=\"0.1\"} 1\n",
                "app_latency_seconds_bucket{le=\"+Inf\"} 2\n",
                "# HELP app_build_info Build.\n",
                "# TYPE app_build_info gauge\n",
                "app_build_info{version=\"1\"} 1\n",
            )
        );
    }

    #[cfg(feature = "net")]
    #[test]
    fn a_node_registry_converts_with_every_family_typed() {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::gauge::Gauge;
        use prometheus_client::registry::Registry;
        let mut registry = Registry::with_prefix("meshara");
        let c: Counter = Counter::default();
        c.inc();
        registry.register("messages", "Envelopes", c);
        registry.register("outbox", "Messages waiting", Gauge::<i64>::default());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let classic = to_classic(&text);
        assert!(
            classic.contains("# TYPE meshara_messages_total counter\nmeshara_messages_total 1\n")
        );
        assert!(classic.contains("# TYPE meshara_outbox gauge\n"));
        assert!(!classic.contains("# EOF"));
    }
}
