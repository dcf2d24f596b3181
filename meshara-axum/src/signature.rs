//! HTTP Message Signatures (RFC 9421) with Ed25519 Meshara identities.
//!
//! **What a signature must cover to be accepted, and why.**
//!
//! - `@method`, and the request target: `@path`, `@target-uri` or `@request-target`; when the
//!   URI has a query, `@query`, `@target-uri` or `@request-target` too. Otherwise a signature
//!   for one operation could be replayed against another.
//! - For a request with a body, `content-digest` (RFC 9530, `sha-256` or `sha-512`), whose
//!   digest the verifier checks against the body: the signature covers the digest, the digest
//!   covers the body.
//! - Any other component the signer chooses: `@authority`, `@scheme` and header fields. The
//!   derived components of requests are all supported except `@query-param`; component
//!   parameters (`;sf`, `;key`, `;bs`, `;req`, `;name`) are refused as unsupported.
//!
//! The signature parameters must carry `created` and `keyid` (the caller's NodeId) and may carry
//! `alg` (only `"ed25519"`), `expires` and `nonce`. Replays are refused for as long as a
//! signature can be accepted (`max_age` plus `max_clock_skew`): by `nonce` when there is one,
//! otherwise by the signature itself. Ed25519 signatures are deterministic and, verified
//! strictly, not malleable, so a captured request cannot be sent again under another signature;
//! the price is that without a nonce two identical requests signed in the same second are the
//! same signature, and the second is refused as a replay (send a `nonce` to make them distinct).
//!
//! With several signatures (several `Signature-Input` members), the verifier uses the first
//! member that is an Ed25519 signature (no `alg`, or `alg="ed25519"`) with a NodeId as `keyid`
//! and skips the others (an HMAC added by a proxy, another scheme).
//!
//! [`VerifySignaturesLayer`] checks all of it — clock skew in both directions, the signature's
//! age, the replay cache, the digest of the (bounded) body — and hands the result to the
//! [`VerifiedPeer`](crate::VerifiedPeer) extractor, which rejects with the precise reason.
//!
//! The signature is verified from the headers alone (it covers `Content-Digest`, not the
//! body), so a forged or replayed request is refused before its body is read; a
//! [`RateLimitLayer`](crate::RateLimitLayer) placed outside the verifier charges the signer
//! before the body is read too. Only then is the body buffered (at most
//! [`SignaturePolicy::max_body`], 64 KiB by default) and its digest checked.
//!
//! Rust callers sign with [`sign_request`].

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{OriginalUri, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use data_encoding::BASE64;
use http_body_util::BodyExt;
use meshara_core::{Identity, NodeId};
use sfv::{BareItem, FieldType, InnerList, Item, ListEntry, Parameters, Parser};
use sha2::{Digest, Sha256, Sha512};
use tower::{Layer, Service};

use crate::extract::VerifiedPeer;
use crate::layers::DeferredKeyCharge;

/// The signature label [`sign_request`] uses.
pub const SIGNATURE_LABEL: &str = "meshara";

/// Why a signed request was not accepted. The rejection of
/// [`VerifiedPeer`](crate::VerifiedPeer) for HTTP callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// No `Signature-Input`/`Signature` headers.
    #[error("the request is not signed: send Signature-Input and Signature headers (RFC 9421)")]
    Missing,
    /// The headers do not parse, or a required parameter is missing.
    #[error("malformed signature headers: {0}")]
    Malformed(String),
    /// An algorithm other than ed25519.
    #[error("unsupported signature algorithm {0:?}: only \"ed25519\" is accepted")]
    UnsupportedAlgorithm(String),
    /// A required component is not covered by the signature.
    #[error("the signature must cover {0}")]
    MissingComponent(&'static str),
    /// The signature does not verify for the keyid's key.
    #[error("the signature does not verify for keyid {0}")]
    Invalid(NodeId),
    /// `created` is too old, or `expires` has passed.
    #[error("the signature expired ({0})")]
    Expired(String),
    /// `created` is further in the future than the allowed clock skew.
    #[error("the signature was created {0} s in the future, beyond the allowed clock skew")]
    FromTheFuture(u64),
    /// The nonce (or, for a signature without one, the signature itself) was already used
    /// within the replay window.
    #[error("replayed signature: its nonce, or without one the signature, was already used by {0}")]
    Replayed(NodeId),
    /// The body does not match its `Content-Digest`, or a body has no digest.
    #[error("content digest: {0}")]
    Digest(String),
    /// The body is larger than the verifier buffers.
    #[error("the signed body exceeds {0} bytes")]
    BodyTooLarge(usize),
    /// The replay cache is full of nonces that are still inside the acceptance window; they
    /// are never forgotten early (that would let captured requests be replayed), so new
    /// signed requests are refused until the oldest expire, in about this many seconds.
    #[error(
        "too many signed requests in the replay window: try again in {0} s (the replay cache is \
         full and live nonces are never forgotten)"
    )]
    ReplayCacheFull(u64),
    /// The signed body did not arrive within [`SignaturePolicy::body_timeout`].
    #[error("the signed body did not arrive within {0} ms")]
    BodyTimeout(u64),
}

impl SignatureError {
    /// Status code and machine-readable code of this rejection.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            SignatureError::Missing => (StatusCode::UNAUTHORIZED, "missing_signature"),
            SignatureError::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed_signature"),
            SignatureError::UnsupportedAlgorithm(_) => {
                (StatusCode::BAD_REQUEST, "unsupported_algorithm")
            }
            SignatureError::MissingComponent(_) => {
                (StatusCode::UNAUTHORIZED, "signature_incomplete")
            }
            SignatureError::Invalid(_) => (StatusCode::UNAUTHORIZED, "invalid_signature"),
            SignatureError::Expired(_) => (StatusCode::UNAUTHORIZED, "expired_signature"),
            SignatureError::FromTheFuture(_) => (StatusCode::UNAUTHORIZED, "future_signature"),
            SignatureError::Replayed(_) => (StatusCode::UNAUTHORIZED, "replayed_signature"),
            SignatureError::Digest(_) => (StatusCode::BAD_REQUEST, "digest_mismatch"),
            SignatureError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            SignatureError::ReplayCacheFull(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "replay_cache_full")
            }
            SignatureError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
        }
    }

    /// Seconds the caller should wait before retrying, for the `Retry-After` header.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            SignatureError::ReplayCacheFull(secs) => Some(*secs),
            _ => None,
        }
    }
}

/// Verification policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignaturePolicy {
    /// How far `created` may be ahead of our clock.
    pub max_clock_skew: Duration,
    /// How old (by `created`) a signature may be; nonces are remembered this long plus the
    /// clock skew.
    pub max_age: Duration,
    /// Nonces (or signatures without one) remembered at most. One is never forgotten while its
    /// signature could still be accepted: when the cache is full of live entries, new signed
    /// requests are refused (503 `replay_cache_full` with `Retry-After`) until the oldest
    /// expire. Size it above the signed requests you expect in `max_age + max_clock_skew`, and
    /// rate limit callers ([`RateLimitLayer`](crate::RateLimitLayer)) so that nobody can fill it
    /// alone.
    pub replay_capacity: usize,
    /// Largest body buffered to check its digest (default 64 KiB); a larger signed body is
    /// refused with 413 `body_too_large`, without reading more than this.
    pub max_body: usize,
    /// Time the whole signed body may take to arrive once the headers verified (default
    /// 10 s); a slower one is refused with 408 `body_timeout`, so that a signer cannot hold
    /// the verifier by trickling its body.
    pub body_timeout: Duration,
    /// The scheme signers use to reach this server, for `@scheme` and `@target-uri` when the
    /// request line carries none (it rarely does): `"http"` by default, `"https"` behind a
    /// TLS-terminating proxy or when serving TLS.
    pub scheme: &'static str,
}

impl Default for SignaturePolicy {
    fn default() -> Self {
        Self {
            max_clock_skew: Duration::from_secs(30),
            max_age: Duration::from_secs(300),
            replay_capacity: 100_000,
            max_body: 64 << 10,
            body_timeout: Duration::from_secs(10),
            scheme: "http",
        }
    }
}

/// The result the layer leaves for the extractor when verification failed.
#[derive(Debug, Clone)]
pub(crate) struct SignatureFailure(pub(crate) SignatureError);

/// Replay keys of verified signatures (`nonce:` and the nonce, or `sig:` and the signature),
/// by their `created` time, so that the expired ones are dropped first and live ones never.
#[derive(Debug, Default)]
struct ReplayCache {
    seen: HashSet<(NodeId, String)>,
    by_created: BTreeMap<u64, Vec<(NodeId, String)>>,
}

/// What the headers of a signed request proved.
struct SignedHead {
    peer: NodeId,
    replay_key: String,
    created: u64,
    covers_digest: bool,
}

/// A layer verifying RFC 9421 signatures on requests that did not arrive over Meshara. It
/// never rejects by itself: routes that need an identity take [`VerifiedPeer`], which rejects
/// with the reason found here.
#[derive(Debug, Clone)]
pub struct VerifySignaturesLayer {
    policy: SignaturePolicy,
    replay: Arc<Mutex<ReplayCache>>,
}

impl VerifySignaturesLayer {
    /// A verifier with `policy` and its own replay cache.
    pub fn new(policy: SignaturePolicy) -> Self {
        Self {
            policy,
            replay: Arc::default(),
        }
    }
}

impl Default for VerifySignaturesLayer {
    fn default() -> Self {
        Self::new(SignaturePolicy::default())
    }
}

impl<S> Layer<S> for VerifySignaturesLayer {
    type Service = VerifySignatures<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifySignatures {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`VerifySignaturesLayer`].
#[derive(Debug, Clone)]
pub struct VerifySignatures<S> {
    inner: S,
    layer: VerifySignaturesLayer,
}

impl<S> Service<Request> for VerifySignatures<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // Take the service that was polled ready; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let extensions = request.extensions();
            let request = if extensions.get::<VerifiedPeer>().is_some()
                || extensions.get::<SignatureFailure>().is_some()
            {
                request // authenticated by the Meshara connection, or checked by an outer layer
            } else {
                match layer.verify(request).await {
                    Ok(request) => request,
                    Err(refusal) => return Ok(*refusal),
                }
            };
            inner.call(request).await
        })
    }
}

impl VerifySignaturesLayer {
    /// Verifies `request`'s signature, leaving a [`VerifiedPeer`] or a [`SignatureFailure`]
    /// in its extensions; `Err` is an answer to send at once (the signer is rate limited).
    async fn verify(&self, request: Request) -> Result<Request, Box<Response>> {
        let (mut parts, body) = request.into_parts();
        // Unsigned requests pass untouched.
        if !parts.headers.contains_key("signature-input") {
            parts
                .extensions
                .insert(SignatureFailure(SignatureError::Missing));
            return Ok(Request::from_parts(parts, body));
        }
        let uri = parts
            .extensions
            .get::<OriginalUri>()
            .map_or_else(|| parts.uri.clone(), |o| o.0.clone());
        let now = unix_secs();
        // Everything but the body first: a forged, expired or replayed request is refused
        // without reading its body.
        let head = match self.check_head(&parts.method, &uri, &parts.headers, now) {
            Ok(head) => head,
            Err(e) => {
                tracing::debug!(error = %e, "refused an HTTP message signature");
                parts.extensions.insert(SignatureFailure(e));
                return Ok(Request::from_parts(parts, body));
            }
        };
        // An outer RateLimitLayer charges the signer now, before the body is buffered.
        if let Some(charge) = parts.extensions.remove::<DeferredKeyCharge>() {
            charge.charge(head.peer)?;
        }
        let too_large = SignatureError::BodyTooLarge(self.policy.max_body);
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.policy.max_body as u64) {
            parts.extensions.insert(SignatureFailure(too_large));
            return Ok(Request::from_parts(parts, Body::empty()));
        }
        let collect = http_body_util::Limited::new(body, self.policy.max_body).collect();
        let bytes = match tokio::time::timeout(self.policy.body_timeout, collect).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(_)) => {
                parts.extensions.insert(SignatureFailure(too_large));
                return Ok(Request::from_parts(parts, Body::empty()));
            }
            Err(_) => {
                let ms = u64::try_from(self.policy.body_timeout.as_millis()).unwrap_or(u64::MAX);
                tracing::debug!(peer = %head.peer, "a signed body did not arrive in time");
                parts
                    .extensions
                    .insert(SignatureFailure(SignatureError::BodyTimeout(ms)));
                return Ok(Request::from_parts(parts, Body::empty()));
            }
        };
        let outcome = self
            .check_body(&head, &parts.headers, &bytes)
            // Only a verified request consumes its nonce.
            .and_then(|()| self.remember(head.peer, head.replay_key, head.created, now));
        match outcome {
            Ok(()) => {
                parts.extensions.insert(VerifiedPeer(head.peer));
            }
            Err(e) => {
                tracing::debug!(peer = %head.peer, error = %e, "refused a signed request");
                parts.extensions.insert(SignatureFailure(e));
            }
        }
        Ok(Request::from_parts(parts, Body::from(bytes)))
    }

    fn check_body(
        &self,
        head: &SignedHead,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        if body.is_empty() {
            return Ok(());
        }
        if !head.covers_digest {
            return Err(SignatureError::MissingComponent("content-digest"));
        }
        check_digest(headers, body)
    }

    /// Verifies everything the headers carry (the signature covers `Content-Digest`, not the
    /// body), and that the nonce is not known yet.
    fn check_head(
        &self,
        method: &axum::http::Method,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        now: u64,
    ) -> Result<SignedHead, SignatureError> {
        let malformed = |what: &str| SignatureError::Malformed(what.to_owned());
        let input = header_str(headers, "signature-input")?;
        let signature = header_str(headers, "signature")?;
        let inputs: sfv::Dictionary = Parser::new(input)
            .parse()
            .map_err(|e| malformed(&format!("Signature-Input: {e}")))?;
        let signatures: sfv::Dictionary = Parser::new(signature)
            .parse()
            .map_err(|e| malformed(&format!("Signature: {e}")))?;
        // Several signatures may be present (RFC 9421 §4.3): verify the first member that is
        // ours to verify, an Ed25519 signature by a NodeId, and skip the others.
        let param_of = |list: &InnerList, name: &str| {
            list.params
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .map(|(_, v)| v.clone())
        };
        let mut other_alg: Option<String> = None;
        let mut chosen: Option<(sfv::Key, InnerList, NodeId)> = None;
        for (label, entry) in inputs.iter() {
            let ListEntry::InnerList(list) = entry else {
                continue;
            };
            if let Some(alg) = param_of(list, "alg") {
                let alg = alg
                    .as_string()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default();
                if alg != "ed25519" {
                    other_alg.get_or_insert(alg);
                    continue;
                }
            }
            let Some(peer) = param_of(list, "keyid").and_then(|k| {
                k.as_string()
                    .and_then(|k| k.as_str().parse::<NodeId>().ok())
            }) else {
                continue;
            };
            chosen = Some((label.clone(), list.clone(), peer));
            break;
        }
        let Some((label, list, peer)) = chosen else {
            return Err(match other_alg {
                Some(alg) => SignatureError::UnsupportedAlgorithm(alg),
                None => malformed(
                    "no Signature-Input member is an Ed25519 signature with a keyid that is a NodeId",
                ),
            });
        };
        let sig_bytes = match signatures.get(&label) {
            Some(ListEntry::Item(item)) => item
                .bare_item
                .as_byte_sequence()
                .ok_or_else(|| malformed("Signature member must be a byte sequence"))?
                .to_vec(),
            _ => {
                return Err(malformed(
                    "Signature has no member for the Signature-Input label",
                ));
            }
        };
        let param = |name: &str| param_of(&list, name);
        let created = param("created")
            .and_then(|c| c.as_integer())
            .map(i64::from)
            .and_then(|c| u64::try_from(c).ok())
            .ok_or_else(|| malformed("created is required"))?;
        // Replays are refused by nonce, or without one by the signature itself.
        let replay_key = match param("nonce") {
            Some(nonce) => {
                let nonce = nonce
                    .as_string()
                    .map(|s| s.as_str().to_owned())
                    .filter(|n| !n.is_empty() && n.len() <= 128)
                    .ok_or_else(|| malformed("nonce must be a string of 1..=128 characters"))?;
                format!("nonce:{nonce}")
            }
            None => format!("sig:{}", BASE64.encode(&sig_bytes)),
        };
        if created > now + self.policy.max_clock_skew.as_secs() {
            return Err(SignatureError::FromTheFuture(created - now));
        }
        if now.saturating_sub(created) > self.policy.max_age.as_secs() {
            return Err(SignatureError::Expired(format!(
                "created {} s ago, more than {} s",
                now - created,
                self.policy.max_age.as_secs()
            )));
        }
        if let Some(expires) = param("expires").and_then(|e| e.as_integer()).map(i64::from) {
            if expires < i64::try_from(now).unwrap_or(i64::MAX) {
                return Err(SignatureError::Expired(
                    "its expires time has passed".into(),
                ));
            }
        }
        // The components the signature covers, in order.
        let mut covered: Vec<String> = Vec::new();
        for item in &list.items {
            let name = item
                .bare_item
                .as_string()
                .ok_or_else(|| malformed("covered components must be strings"))?
                .as_str()
                .to_owned();
            if !item.params.is_empty() {
                return Err(malformed(&format!(
                    "component parameters are not supported (on {name:?})"
                )));
            }
            if covered.contains(&name) {
                return Err(malformed(&format!("{name:?} is covered twice")));
            }
            covered.push(name);
        }
        let covers = |c: &str| covered.iter().any(|x| x == c);
        if !covers("@method") {
            return Err(SignatureError::MissingComponent("@method"));
        }
        let whole_target = covers("@target-uri") || covers("@request-target");
        if !whole_target && !covers("@path") {
            return Err(SignatureError::MissingComponent(
                "the request target (@path, @target-uri or @request-target)",
            ));
        }
        if uri.query().is_some() && !whole_target && !covers("@query") {
            return Err(SignatureError::MissingComponent(
                "the query (@query, @target-uri or @request-target)",
            ));
        }
        let covers_digest = covers("content-digest");
        let may_have_body = headers.contains_key(header::TRANSFER_ENCODING)
            || headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if may_have_body && !covers_digest {
            return Err(SignatureError::MissingComponent("content-digest"));
        }
        let mut base = String::new();
        for name in &covered {
            let value = component_value(name, method, uri, headers, self.policy.scheme)?;
            base.push_str(&format!("\"{name}\": {value}\n"));
        }
        base.push_str("\"@signature-params\": ");
        base.push_str(&serialize_params(&list)?);
        let signature = ed25519_dalek_signature(&sig_bytes).ok_or(SignatureError::Invalid(peer))?;
        peer.verifying_key()
            .verify_strict(base.as_bytes(), &signature)
            .map_err(|_| SignatureError::Invalid(peer))?;
        if self
            .replay_lock()
            .seen
            .contains(&(peer, replay_key.clone()))
        {
            return Err(SignatureError::Replayed(peer));
        }
        Ok(SignedHead {
            peer,
            replay_key,
            created,
            covers_digest,
        })
    }

    fn replay_lock(&self) -> std::sync::MutexGuard<'_, ReplayCache> {
        self.replay.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(
        &self,
        peer: NodeId,
        key: String,
        created: u64,
        now: u64,
    ) -> Result<(), SignatureError> {
        let window = self.policy.max_age.as_secs() + self.policy.max_clock_skew.as_secs();
        let mut cache = self.replay_lock();
        // Forget the entries whose signatures can no longer be accepted, and only those.
        let horizon = now.saturating_sub(window);
        while let Some(entry) = cache.by_created.first_entry() {
            if *entry.key() >= horizon {
                break;
            }
            for old in entry.remove() {
                cache.seen.remove(&old);
            }
        }
        if cache.seen.contains(&(peer, key.clone())) {
            return Err(SignatureError::Replayed(peer));
        }
        if cache.seen.len() >= self.policy.replay_capacity {
            let oldest = cache.by_created.keys().next().copied().unwrap_or(now);
            let wait = (oldest + window + 1).saturating_sub(now).max(1);
            tracing::warn!(
                capacity = self.policy.replay_capacity,
                retry_after_s = wait,
                "the signature replay cache is full of live nonces; refusing signed requests"
            );
            return Err(SignatureError::ReplayCacheFull(wait));
        }
        cache.seen.insert((peer, key.clone()));
        cache
            .by_created
            .entry(created)
            .or_default()
            .push((peer, key));
        Ok(())
    }
}

fn ed25519_dalek_signature(bytes: &[u8]) -> Option<ed25519_dalek::Signature> {
    ed25519_dalek::Signature::from_slice(bytes).ok()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, SignatureError> {
    headers
        .get(name)
        .ok_or(SignatureError::Missing)?
        .to_str()
        .map_err(|_| SignatureError::Malformed(format!("{name} is not ASCII")))
}

/// The value of a covered component (RFC 9421 §2): a derived component of a request, or a
/// header field. `scheme` is the scheme signers used when the URI carries none.
fn component_value(
    name: &str,
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    scheme: &str,
) -> Result<String, SignatureError> {
    let authority = || {
        uri.authority()
            .map(|a| a.as_str().to_ascii_lowercase())
            .or_else(|| {
                headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_ascii_lowercase)
            })
            .ok_or_else(|| SignatureError::Malformed(format!("{name} covered but no host")))
    };
    let scheme = || uri.scheme_str().unwrap_or(scheme).to_ascii_lowercase();
    // Normalized as HTTP does (RFC 9421 §2.2.3): lowercase, without the scheme's default port.
    let authority = || {
        authority().map(|a| {
            let default = match scheme().as_str() {
                "http" => ":80",
                "https" => ":443",
                _ => "",
            };
            match a.strip_suffix(default) {
                Some(host) if !default.is_empty() => host.to_owned(),
                _ => a,
            }
        })
    };
    let path_and_query = || {
        uri.path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned())
    };
    Ok(match name {
        "@method" => method.as_str().to_owned(),
        "@path" => uri.path().to_owned(),
        "@query" => format!("?{}", uri.query().unwrap_or_default()),
        "@authority" => authority()?,
        "@scheme" => scheme(),
        "@target-uri" => format!("{}://{}{}", scheme(), authority()?, path_and_query()),
        "@request-target" => path_and_query(),
        "@status" => {
            return Err(SignatureError::Malformed(
                "@status is a response component, not a request's".into(),
            ));
        }
        other if other.starts_with('@') => {
            return Err(SignatureError::Malformed(format!(
                "unsupported derived component {other:?}"
            )));
        }
        field => headers
            .get_all(field)
            .iter()
            .map(|v| v.to_str().map(str::trim))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| SignatureError::Malformed(format!("{field} is not ASCII")))
            .and_then(|values| {
                if values.is_empty() {
                    Err(SignatureError::Malformed(format!(
                        "covered field {field:?} is absent"
                    )))
                } else {
                    Ok(values.join(", "))
                }
            })?,
    })
}

fn serialize_params(list: &InnerList) -> Result<String, SignatureError> {
    let entries: sfv::List = vec![ListEntry::InnerList(list.clone())];
    entries
        .serialize()
        .ok_or_else(|| SignatureError::Malformed("empty signature parameters".into()))
}

/// Checks every digest of `Content-Digest` (RFC 9530) whose algorithm we know (`sha-256`,
/// `sha-512`) against the body; at least one must be there. Others are ignored, as the RFC
/// lets a recipient do.
fn check_digest(headers: &HeaderMap, body: &[u8]) -> Result<(), SignatureError> {
    let value = header_str(headers, "content-digest")
        .map_err(|_| SignatureError::Digest("a request with a body needs Content-Digest".into()))?;
    let digests: sfv::Dictionary = Parser::new(value)
        .parse()
        .map_err(|e| SignatureError::Digest(format!("Content-Digest does not parse: {e}")))?;
    let mut checked = false;
    for (algorithm, entry) in digests.iter() {
        let computed = match algorithm.as_str() {
            "sha-256" => Sha256::digest(body).to_vec(),
            "sha-512" => Sha512::digest(body).to_vec(),
            _ => continue,
        };
        let given = match entry {
            ListEntry::Item(item) => item.bare_item.as_byte_sequence(),
            ListEntry::InnerList(_) => None,
        }
        .ok_or_else(|| {
            SignatureError::Digest(format!("{} is not a byte sequence", algorithm.as_str()))
        })?;
        if computed.as_slice() != given {
            return Err(SignatureError::Digest(format!(
                "the body does not match {}",
                algorithm.as_str()
            )));
        }
        checked = true;
    }
    if !checked {
        return Err(SignatureError::Digest(
            "Content-Digest has neither sha-256 nor sha-512".into(),
        ));
    }
    Ok(())
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs `request` (with `body`, which must be the body that will be sent) as `identity`:
/// sets `Content-Digest` (when there is a body), `Signature-Input` and `Signature` covering
/// `@method`, `@path`, `@query` (if any), `@authority` (if the URI has one) and
/// `content-digest`.
pub fn sign_request<B>(
    identity: &Identity,
    request: &mut axum::http::Request<B>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let mut nonce = [0u8; 16];
    getrandom_fill(&mut nonce);
    sign_request_with(identity, request, body, unix_secs(), &BASE64.encode(&nonce))
}

fn getrandom_fill(buf: &mut [u8]) {
    // The identity crate's RNG source: the OS CSPRNG.
    use rand_core::RngCore;
    rand_core::OsRng.fill_bytes(buf);
}

/// [`sign_request`] with an explicit `created` time and nonce (tests, replays on purpose).
pub fn sign_request_with<B>(
    identity: &Identity,
    request: &mut axum::http::Request<B>,
    body: &[u8],
    created: u64,
    nonce: &str,
) -> Result<(), SignatureError> {
    let headers = request.headers_mut();
    if !body.is_empty() {
        let digest = format!("sha-256=:{}:", BASE64.encode(&Sha256::digest(body)));
        headers.insert(
            "content-digest",
            HeaderValue::from_str(&digest).map_err(|e| SignatureError::Malformed(e.to_string()))?,
        );
    }
    let mut covered = vec!["@method", "@path"];
    if request.uri().query().is_some() {
        covered.push("@query");
    }
    if request.uri().authority().is_some() {
        covered.push("@authority");
    }
    if !body.is_empty() {
        covered.push("content-digest");
    }
    let string = |s: &str| {
        sfv::String::from_string(s.to_owned())
            .map_err(|(e, _)| SignatureError::Malformed(format!("{s:?}: {e}")))
    };
    let mut params = Parameters::new();
    params.insert(
        sfv::key_ref("created").to_owned(),
        BareItem::Integer(sfv::integer(i64::try_from(created).unwrap_or(i64::MAX))),
    );
    params.insert(
        sfv::key_ref("keyid").to_owned(),
        BareItem::String(string(&identity.node_id().to_string())?),
    );
    params.insert(
        sfv::key_ref("alg").to_owned(),
        BareItem::String(string("ed25519")?),
    );
    params.insert(
        sfv::key_ref("nonce").to_owned(),
        BareItem::String(string(nonce)?),
    );
    let items = covered
        .iter()
        .map(|c| string(c).map(|s| Item::new(BareItem::String(s))))
        .collect::<Result<Vec<_>, _>>()?;
    let list = InnerList::with_params(items, params);
    let serialized = serialize_params(&list)?;
    let mut base = String::new();
    for name in &covered {
        let value = component_value(
            name,
            request.method(),
            request.uri(),
            request.headers(),
            "http",
        )?;
        base.push_str(&format!("\"{name}\": {value}\n"));
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(&serialized);
    let signature = identity
        .sign_http_signature_base(base.as_bytes())
        .map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let headers = request.headers_mut();
    headers.insert(
        "signature-input",
        HeaderValue::from_str(&format!("{SIGNATURE_LABEL}={serialized}"))
            .map_err(|e| SignatureError::Malformed(e.to_string()))?,
    );
    headers.insert(
        "signature",
        HeaderValue::from_str(&format!(
            "{SIGNATURE_LABEL}=:{}:",
            BASE64.encode(&signature)
        ))
        .map_err(|e| SignatureError::Malformed(e.to_string()))?,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_nonces_are_never_evicted_and_expired_ones_are() {
        let layer = VerifySignaturesLayer::new(SignaturePolicy {
            max_clock_skew: Duration::from_secs(1),
            max_age: Duration::from_secs(10),
            replay_capacity: 2,
            max_body: 1024,
            body_timeout: Duration::from_secs(1),
            scheme: "http",
        });
        let peer = Identity::generate().node_id();
        let t = 1_000_000;
        assert_eq!(layer.remember(peer, "a".into(), t, t), Ok(()));
        assert_eq!(layer.remember(peer, "b".into(), t + 5, t + 5), Ok(()));
        // Full of live nonces: refused, with the wait until the oldest (created t) expires.
        assert_eq!(
            layer.remember(peer, "c".into(), t + 6, t + 6),
            Err(SignatureError::ReplayCacheFull(6))
        );
        // "a" is still remembered at the very end of its window (t + max_age + skew)…
        assert_eq!(
            layer.remember(peer, "a".into(), t, t + 11),
            Err(SignatureError::Replayed(peer))
        );
        // …and forgotten after it, which makes room.
        assert_eq!(layer.remember(peer, "c".into(), t + 12, t + 12), Ok(()));
        assert_eq!(
            layer.remember(peer, "b".into(), t + 5, t + 12),
            Err(SignatureError::Replayed(peer))
        );
    }
}
