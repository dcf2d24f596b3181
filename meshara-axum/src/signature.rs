//! HTTP Message Signatures (RFC 9421) with Ed25519 Meshara identities.
//!
//! A caller signs `@method`, `@path`, `@query` (when the URI has one), `@authority` (when it
//! knows the host) and, for a request with a body, `content-digest` (RFC 9530, `sha-256`). The
//! signature parameters must carry `created`, `keyid` (the caller's NodeId), `nonce`, and may
//! carry `alg="ed25519"` and `expires`. [`VerifySignaturesLayer`] checks all of it — clock skew
//! in both directions, the signature's age, a replay cache of nonces for as long as a signature
//! can be valid, the digest of the (bounded) body — and hands the result to the
//! [`VerifiedPeer`](crate::VerifiedPeer) extractor, which rejects with the precise reason.
//!
//! Rust callers sign with [`sign_request`].

use std::collections::{HashSet, VecDeque};
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
use sha2::{Digest, Sha256};
use tower::{Layer, Service};

use crate::extract::VerifiedPeer;

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
    /// The nonce was already used within the replay window.
    #[error("replayed signature: nonce already used by {0}")]
    Replayed(NodeId),
    /// The body does not match its `Content-Digest`, or a body has no digest.
    #[error("content digest: {0}")]
    Digest(String),
    /// The body is larger than the verifier buffers.
    #[error("the signed body exceeds {0} bytes")]
    BodyTooLarge(usize),
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
        }
    }
}

/// Verification policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignaturePolicy {
    /// How far `created` may be ahead of our clock.
    pub max_clock_skew: Duration,
    /// How old (by `created`) a signature may be; also how long nonces are remembered.
    pub max_age: Duration,
    /// Nonces remembered at most (oldest forgotten first).
    pub replay_capacity: usize,
    /// Largest body buffered to check its digest.
    pub max_body: usize,
}

impl Default for SignaturePolicy {
    fn default() -> Self {
        Self {
            max_clock_skew: Duration::from_secs(30),
            max_age: Duration::from_secs(300),
            replay_capacity: 100_000,
            max_body: 2 << 20,
        }
    }
}

/// The result the layer leaves for the extractor when verification failed.
#[derive(Debug, Clone)]
pub(crate) struct SignatureFailure(pub(crate) SignatureError);

#[derive(Debug, Default)]
struct ReplayCache {
    seen: HashSet<(NodeId, String)>,
    order: VecDeque<(u64, NodeId, String)>,
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
            let request = if request.extensions().get::<VerifiedPeer>().is_some() {
                request // authenticated by the Meshara connection already
            } else {
                layer.verify(request).await
            };
            inner.call(request).await
        })
    }
}

impl VerifySignaturesLayer {
    async fn verify(&self, request: Request) -> Request {
        let (mut parts, body) = request.into_parts();
        let signed = parts.headers.contains_key("signature-input");
        // Buffer a signed body (bounded) to check its digest; unsigned requests pass untouched.
        let (body, outcome) = if !signed {
            (body, Err(SignatureError::Missing))
        } else {
            match http_body_util::Limited::new(body, self.policy.max_body)
                .collect()
                .await
            {
                Ok(collected) => {
                    let bytes = collected.to_bytes();
                    let path = parts
                        .extensions
                        .get::<OriginalUri>()
                        .map_or_else(|| parts.uri.clone(), |o| o.0.clone());
                    let outcome = self.check(&parts.method, &path, &parts.headers, &bytes);
                    (Body::from(bytes), outcome)
                }
                Err(_) => (
                    Body::empty(),
                    Err(SignatureError::BodyTooLarge(self.policy.max_body)),
                ),
            }
        };
        match outcome {
            Ok(peer) => {
                parts.extensions.insert(VerifiedPeer(peer));
            }
            Err(e) => {
                parts.extensions.insert(SignatureFailure(e));
            }
        }
        Request::from_parts(parts, body)
    }

    fn check(
        &self,
        method: &axum::http::Method,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<NodeId, SignatureError> {
        let malformed = |what: &str| SignatureError::Malformed(what.to_owned());
        let input = header_str(headers, "signature-input")?;
        let signature = header_str(headers, "signature")?;
        let inputs: sfv::Dictionary = Parser::new(input)
            .parse()
            .map_err(|e| malformed(&format!("Signature-Input: {e}")))?;
        let signatures: sfv::Dictionary = Parser::new(signature)
            .parse()
            .map_err(|e| malformed(&format!("Signature: {e}")))?;
        // Verify the first label present in both headers (clients send one).
        let (label, entry) = inputs
            .iter()
            .next()
            .ok_or_else(|| malformed("Signature-Input has no member"))?;
        let ListEntry::InnerList(list) = entry else {
            return Err(malformed("Signature-Input member must be an inner list"));
        };
        let sig_bytes = match signatures.get(label) {
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
        let param = |name: &str| {
            list.params
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .map(|(_, v)| v)
        };
        let keyid = param("keyid")
            .and_then(BareItem::as_string)
            .ok_or_else(|| malformed("keyid (the caller's NodeId) is required"))?;
        let peer: NodeId = keyid
            .as_str()
            .parse()
            .map_err(|_| malformed("keyid is not a NodeId"))?;
        if let Some(alg) = param("alg") {
            let alg = alg
                .as_string()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default();
            if alg != "ed25519" {
                return Err(SignatureError::UnsupportedAlgorithm(alg));
            }
        }
        let created = param("created")
            .and_then(BareItem::as_integer)
            .map(i64::from)
            .and_then(|c| u64::try_from(c).ok())
            .ok_or_else(|| malformed("created is required"))?;
        let nonce = param("nonce")
            .and_then(BareItem::as_string)
            .map(|s| s.as_str().to_owned())
            .filter(|n| !n.is_empty() && n.len() <= 128)
            .ok_or_else(|| malformed("nonce (1..=128 characters) is required"))?;
        let now = unix_secs();
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
        if let Some(expires) = param("expires")
            .and_then(BareItem::as_integer)
            .map(i64::from)
        {
            if expires < i64::try_from(now).unwrap_or(i64::MAX) {
                return Err(SignatureError::Expired(
                    "its expires time has passed".into(),
                ));
            }
        }
        // The components the signature covers, in order.
        let mut covered = Vec::new();
        for item in &list.items {
            let name = item
                .bare_item
                .as_string()
                .ok_or_else(|| malformed("covered components must be strings"))?;
            covered.push(name.as_str().to_owned());
        }
        let covers = |c: &str| covered.iter().any(|x| x == c);
        for required in ["@method", "@path"] {
            if !covers(required) {
                return Err(SignatureError::MissingComponent(required));
            }
        }
        if uri.query().is_some() && !covers("@query") {
            return Err(SignatureError::MissingComponent("@query"));
        }
        if !body.is_empty() {
            if !covers("content-digest") {
                return Err(SignatureError::MissingComponent("content-digest"));
            }
            check_digest(headers, body)?;
        }
        let mut base = String::new();
        for name in &covered {
            let value = component_value(name, method, uri, headers)?;
            base.push_str(&format!("\"{name}\": {value}\n"));
        }
        base.push_str("\"@signature-params\": ");
        base.push_str(&serialize_params(list)?);
        let signature = ed25519_dalek_signature(&sig_bytes).ok_or(SignatureError::Invalid(peer))?;
        peer.verifying_key()
            .verify_strict(base.as_bytes(), &signature)
            .map_err(|_| SignatureError::Invalid(peer))?;
        // Only a verified signature consumes its nonce.
        self.remember(peer, nonce, created, now)?;
        Ok(peer)
    }

    fn remember(
        &self,
        peer: NodeId,
        nonce: String,
        created: u64,
        now: u64,
    ) -> Result<(), SignatureError> {
        let mut cache = self.replay.lock().unwrap_or_else(|p| p.into_inner());
        let horizon = now
            .saturating_sub(self.policy.max_age.as_secs() + self.policy.max_clock_skew.as_secs());
        while let Some((t, p, n)) = cache.order.front().cloned() {
            if t >= horizon && cache.order.len() < self.policy.replay_capacity {
                break;
            }
            cache.order.pop_front();
            cache.seen.remove(&(p, n));
        }
        if !cache.seen.insert((peer, nonce.clone())) {
            return Err(SignatureError::Replayed(peer));
        }
        cache.order.push_back((created, peer, nonce));
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

fn component_value(
    name: &str,
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Result<String, SignatureError> {
    Ok(match name {
        "@method" => method.as_str().to_owned(),
        "@path" => uri.path().to_owned(),
        "@query" => format!("?{}", uri.query().unwrap_or_default()),
        "@authority" => uri
            .authority()
            .map(|a| a.as_str().to_ascii_lowercase())
            .or_else(|| {
                headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_ascii_lowercase)
            })
            .ok_or_else(|| SignatureError::Malformed("@authority covered but no host".into()))?,
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

fn check_digest(headers: &HeaderMap, body: &[u8]) -> Result<(), SignatureError> {
    let value = header_str(headers, "content-digest")
        .map_err(|_| SignatureError::Digest("a request with a body needs Content-Digest".into()))?;
    let digests: sfv::Dictionary = Parser::new(value)
        .parse()
        .map_err(|e| SignatureError::Digest(format!("Content-Digest does not parse: {e}")))?;
    let expected = match digests.get("sha-256") {
        Some(ListEntry::Item(item)) => item.bare_item.as_byte_sequence().map(<[u8]>::to_vec),
        _ => None,
    }
    .ok_or_else(|| SignatureError::Digest("only sha-256 is accepted".into()))?;
    if Sha256::digest(body).as_slice() != expected.as_slice() {
        return Err(SignatureError::Digest(
            "the body does not match sha-256".into(),
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
        let value = component_value(name, request.method(), request.uri(), request.headers())?;
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
