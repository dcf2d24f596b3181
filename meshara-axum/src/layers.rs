//! Tower layers keyed by the caller: rate limiting by identity and address, request metrics.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use meshara_core::NodeId;
use meshara_core::rate::TokenBucket;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tower::{Layer, Service};

use crate::error::error_response;
use crate::extract::VerifiedPeer;

/// Waits at or beyond this are not advertised in `Retry-After` (the rate is zero or tiny).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(7 * 86_400);

/// Who a request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Caller {
    /// A verified Meshara identity (over Meshara, or a valid RFC 9421 signature).
    Peer(NodeId),
    /// An unauthenticated caller, by IP address (from axum's `ConnectInfo<SocketAddr>`).
    Ip(IpAddr),
    /// A caller whose address is unknown (no `ConnectInfo<SocketAddr>`): all share a bucket.
    Anonymous,
}

/// Marks requests that arrived over a Meshara connection ([`serve`](crate::serve())): they
/// have no IP address to charge, their identity was proven by the connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OverMeshara;

/// Left by a [`RateLimitLayer`] that ran before the request's signature was verified: the
/// [`VerifySignaturesLayer`](crate::VerifySignaturesLayer) charges the signer through it
/// once the headers verify, before it reads the body.
#[derive(Clone)]
pub(crate) struct DeferredKeyCharge(Arc<Limiter>);

impl DeferredKeyCharge {
    /// Charges `peer`; `Err` is the 429 answer to send.
    pub(crate) fn charge(&self, peer: NodeId) -> Result<(), Box<Response>> {
        let caller = Caller::Peer(peer);
        self.0
            .check(caller, Instant::now())
            .map_err(|wait| Box::new(self.0.refusal(caller, wait)))
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Peer(id) => write!(f, "peer {id}"),
            Caller::Ip(ip) => write!(f, "address {ip}"),
            Caller::Anonymous => f.write_str("callers of unknown address"),
        }
    }
}

/// Rate limiting by identity and by address: a token bucket of `rate` requests per second
/// with bursts of `burst` for each [`VerifiedPeer`] NodeId, and one for each network address
/// (an IPv4 address, an IPv6 /64) when the server provides `ConnectInfo<SocketAddr>`
/// (`into_make_service_with_connect_info`). An HTTP request is charged to its address *and*,
/// when signed, to its signer, so rotating throwaway keys from one address does not escape
/// the address's bucket. Requests served over Meshara ([`serve`](crate::serve())) are
/// charged to their NodeId only. Without `ConnectInfo`, HTTP callers share a single address
/// bucket (a warning is logged once). A request over the limit is answered
/// `429 Too Many Requests` with `Retry-After` and a JSON body, without reaching the inner
/// service. [`per_address`](Self::per_address) sets a different budget for addresses (e.g.
/// larger, for many clients behind one NAT).
///
/// Place it **outside** [`VerifySignaturesLayer`](crate::VerifySignaturesLayer)
/// (`.layer(VerifySignaturesLayer…).layer(RateLimitLayer…)`, so that it runs first): the
/// address is charged before anything else, and the signer as soon as its signature
/// verifies, before the body is read. Placed inside, it charges both after verification.
///
/// At most `max_callers` buckets are kept; when full, buckets that have refilled completely
/// (idle callers) are forgotten first, then arbitrary ones (a forgotten caller starts again
/// with a full bucket).
///
/// ```
/// use axum::{Router, routing::get};
/// use meshara_axum::RateLimitLayer;
///
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hi" }))
///     .layer(meshara_axum::VerifySignaturesLayer::default())
///     .layer(RateLimitLayer::new(20.0, 40).per_address(50.0, 100));
/// # let _ = app;
/// ```
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    shared: Arc<Limiter>,
}

#[derive(Debug)]
struct Limiter {
    rate: f64,
    burst: f64,
    address_rate: f64,
    address_burst: f64,
    max_callers: usize,
    buckets: Mutex<HashMap<Caller, TokenBucket>>,
    warned_no_address: AtomicBool,
}

impl RateLimitLayer {
    /// `rate` requests per second per caller, bursts of up to `burst` (at least 1), tracking
    /// at most 100,000 callers.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self::with_capacity(rate, burst, 100_000)
    }

    /// Like [`new`](Self::new), tracking at most `max_callers` callers (at least 1).
    pub fn with_capacity(rate: f64, burst: u32, max_callers: usize) -> Self {
        let rate = sane_rate(rate);
        let burst = f64::from(burst.max(1));
        Self {
            shared: Arc::new(Limiter {
                rate,
                burst,
                address_rate: rate,
                address_burst: burst,
                max_callers: max_callers.max(1),
                buckets: Mutex::new(HashMap::new()),
                warned_no_address: AtomicBool::new(false),
            }),
        }
    }

    /// The budget of each network address (default: the same as each identity's). Set it
    /// before cloning the layer.
    #[must_use]
    pub fn per_address(self, rate: f64, burst: u32) -> Self {
        let limiter = &self.shared;
        Self {
            shared: Arc::new(Limiter {
                rate: limiter.rate,
                burst: limiter.burst,
                address_rate: sane_rate(rate),
                address_burst: f64::from(burst.max(1)),
                max_callers: limiter.max_callers,
                buckets: Mutex::new(HashMap::new()),
                warned_no_address: AtomicBool::new(false),
            }),
        }
    }

    /// Callers currently tracked.
    pub fn tracked(&self) -> usize {
        self.shared.lock().len()
    }
}

impl Limiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Caller, TokenBucket>> {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Charges one request to `caller`; on refusal, how long until it may retry.
    fn check(&self, caller: Caller, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.lock();
        if !buckets.contains_key(&caller) && buckets.len() >= self.max_callers {
            // Forget idle callers first; if all are active, forget a tenth of them at once so
            // that the scan is paid once per many new callers, not on every request.
            buckets.retain(|_, bucket| !bucket.is_full(now));
            if buckets.len() >= self.max_callers {
                let excess = buckets.len() + 1 - self.max_callers;
                let drop = excess.max(self.max_callers / 10);
                let victims: Vec<Caller> = buckets.keys().take(drop).copied().collect();
                for victim in victims {
                    buckets.remove(&victim);
                }
            }
        }
        let (rate, burst) = match caller {
            Caller::Peer(_) => (self.rate, self.burst),
            Caller::Ip(_) | Caller::Anonymous => (self.address_rate, self.address_burst),
        };
        let bucket = buckets
            .entry(caller)
            .or_insert_with(|| TokenBucket::new(rate, burst, now));
        if bucket.try_take(1.0, now) {
            Ok(())
        } else {
            Err(bucket.wait_for(1.0))
        }
    }

    /// The 429 answer for `caller`, who may retry after `wait`.
    fn refusal(&self, caller: Caller, wait: Duration) -> Response {
        tracing::debug!(%caller, wait_ms = wait.as_millis() as u64, "rate limited");
        let (rate, burst) = match caller {
            Caller::Peer(_) => (self.rate, self.burst),
            Caller::Ip(_) | Caller::Anonymous => (self.address_rate, self.address_burst),
        };
        // Whole seconds, rounded up, at least 1; none when nothing ever refills.
        let retry = (wait < MAX_RETRY_AFTER)
            .then(|| (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1));
        let when = retry.map_or_else(
            || "requests are not allowed to refill".to_owned(),
            |secs| format!("retry in {secs} s"),
        );
        let mut response = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many requests from {caller}: the limit is {rate} per second with bursts of \
                 {burst}; {when}"
            ),
        );
        if let Some(value) = retry.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

fn sane_rate(rate: f64) -> f64 {
    if rate.is_finite() { rate.max(0.0) } else { 0.0 }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.shared.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Arc<Limiter>,
}

impl<S, B> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let now = Instant::now();
        let extensions = request.extensions();
        let address = if let Some(ConnectInfo(addr)) = extensions.get::<ConnectInfo<SocketAddr>>() {
            Some(Caller::Ip(network_of(addr.ip())))
        } else if extensions.get::<OverMeshara>().is_some() {
            None
        } else {
            if !self.limiter.warned_no_address.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "RateLimitLayer: requests carry no ConnectInfo<SocketAddr>, so all HTTP \
                     callers share one address bucket; serve the app with \
                     into_make_service_with_connect_info::<SocketAddr>()"
                );
            }
            Some(Caller::Anonymous)
        };
        let peer = extensions.get::<VerifiedPeer>().map(|p| Caller::Peer(p.0));
        for caller in address.into_iter().chain(peer) {
            if let Err(wait) = self.limiter.check(caller, now) {
                let response = self.limiter.refusal(caller, wait);
                return Box::pin(async move { Ok(response) });
            }
        }
        if peer.is_none() {
            // A signature verified later (by an inner VerifySignaturesLayer) is charged then.
            request
                .extensions_mut()
                .insert(DeferredKeyCharge(self.limiter.clone()));
        }
        Box::pin(self.inner.call(request))
    }
}

/// The unit unauthenticated callers are counted by: an IPv4 address, or an IPv6 /64 (one
/// subscriber usually holds a whole /64, so single addresses would be free to vary).
pub(crate) fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
    }
}

/// The method as a label: the standard ones by name, anything else as `OTHER`, so made-up
/// methods cannot create new series.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// HTTP request metrics for Prometheus: `http_requests_total{method,route,status}` and
/// `http_request_duration_seconds{method,route}` (time to the response head; a streamed body
/// may take longer). Labels stay bounded: routes are axum's matched route templates
/// (`/users/{id}`, not the raw path) and methods outside the standard ones count as `OTHER`.
/// Apply the layer with [`Router::route_layer`](axum::Router::route_layer), which runs after
/// routing, so only matched routes are counted; with `Router::layer` instead, unrouted requests
/// (404) are counted too, under the route `unmatched`.
///
/// ```
/// use axum::{Router, routing::get};
/// use meshara_axum::HttpMetrics;
///
/// let metrics = HttpMetrics::new();
/// let served = metrics.clone();
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hi" }))
///     .route_layer(metrics.layer())
///     // OpenMetrics or the classic text format, as the scraper's Accept header asks.
///     .route(
///         "/metrics",
///         get(move |headers: axum::http::HeaderMap| async move { served.response(&headers) }),
///     );
/// # let _ = app;
/// ```
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpMetrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
        }
    }

    /// Registers the metrics in `registry` (to expose them beside others).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            self.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response head, by method and route",
            self.duration.clone(),
        );
    }

    /// The metrics alone, in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "encoding HTTP metrics failed");
        }
        out
    }

    /// The metrics as a scrape response, negotiated on the request's `Accept` header as
    /// [`meshara_core::exposition::negotiate`] does: OpenMetrics for a scraper that asks for
    /// it, the classic Prometheus text format otherwise, each with its content type.
    pub fn response(&self, request_headers: &axum::http::HeaderMap) -> axum::response::Response {
        metrics_response(request_headers, self.render())
    }

    /// The layer that records into these metrics.
    pub fn layer(&self) -> HttpMetricsLayer {
        HttpMetricsLayer {
            metrics: self.clone(),
        }
    }
}

/// Records requests into [`HttpMetrics`]; made by [`HttpMetrics::layer`].
#[derive(Debug, Clone)]
pub struct HttpMetricsLayer {
    metrics: HttpMetrics,
}

impl<S> Layer<S> for HttpMetricsLayer {
    type Service = RecordMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RecordMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service made by [`HttpMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RecordMetrics<S> {
    inner: S,
    metrics: HttpMetrics,
}

impl<S, B> Service<Request<B>> for RecordMetrics<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
        let method = method_label(request.method()).to_owned();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            let labels = RouteLabels { method, route };
            metrics
                .duration
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            metrics
                .requests
                .get_or_create(&RequestLabels {
                    method: labels.method,
                    route: labels.route,
                    status: response.status().as_u16(),
                })
                .inc();
            Ok(response)
        })
    }
}

/// A `/metrics` response for an OpenMetrics body, in the format the request's `Accept` header
/// asks for.
pub(crate) fn metrics_response(
    request_headers: &axum::http::HeaderMap,
    openmetrics: String,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let accept = request_headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let (content_type, body) = meshara_core::exposition::negotiate(accept, openmetrics);
    ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<Caller> {
        (0..n)
            .map(|_| Caller::Peer(meshara_core::Identity::generate().node_id()))
            .collect()
    }

    #[test]
    fn each_caller_has_its_own_bucket() {
        let layer = RateLimitLayer::new(1.0, 2);
        let t0 = Instant::now();
        let limiter = &layer.shared;
        let p = peers(2);
        assert!(limiter.check(p[0], t0).is_ok());
        assert!(limiter.check(p[0], t0).is_ok());
        let wait = limiter.check(p[0], t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        // Another identity is not affected.
        assert!(limiter.check(p[1], t0).is_ok());
        assert!(limiter.check(Caller::Anonymous, t0).is_ok());
        // Refilled after a second.
        assert!(limiter.check(p[0], t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn a_zero_rate_never_overflows_retry_after() {
        let layer = RateLimitLayer::new(0.0, 1);
        let t0 = Instant::now();
        assert!(layer.shared.check(Caller::Anonymous, t0).is_ok());
        let wait = layer.shared.check(Caller::Anonymous, t0).unwrap_err();
        assert!(wait >= MAX_RETRY_AFTER);
    }

    #[test]
    fn ipv6_callers_are_counted_by_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(network_of(a), network_of(b));
        assert_ne!(network_of(a), network_of(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(network_of(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_table_of_callers_is_bounded() {
        let layer = RateLimitLayer::with_capacity(1.0, 1, 3);
        let limiter = &layer.shared;
        let t0 = Instant::now();
        let p = peers(11);
        for caller in &p[..10] {
            assert!(limiter.check(*caller, t0).is_ok());
            assert!(layer.tracked() <= 3);
        }
        // Idle (refilled) callers are forgotten before active ones: p[9] spends its token
        // again just before the table fills, the others have refilled.
        let later = t0 + Duration::from_secs(5);
        assert!(limiter.check(p[9], later).is_ok());
        assert!(limiter.check(p[10], later).is_ok());
        assert_eq!(layer.tracked(), 2);
        assert!(
            limiter.check(p[9], later).is_err(),
            "the active caller was forgotten"
        );
    }
}
