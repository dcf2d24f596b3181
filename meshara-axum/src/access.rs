//! Who may call [`routes()`](crate::routes): the [`Access`] policy (authentication plus
//! `Host`/`Origin` checks) and the security headers every answer carries.
//!
//! The routes read decrypted messages and send as the node, so mounting them on a port that
//! a browser can reach is dangerous: any web page the user opens may open a WebSocket to
//! `ws://127.0.0.1:8080/meshara/events/ws` (browsers do not apply the same-origin policy to
//! WebSockets), or point its own domain at 127.0.0.1 (DNS rebinding) and read the API as if
//! it were same-origin. [`Access`] defends against both, always:
//!
//! - **`Host`**: only loopback names (`localhost`, `*.localhost`), IP literals and the names
//!   given to [`Access::allow_host`] are answered (403 `forbidden_host` otherwise). A
//!   rebinding page sends its own domain as `Host`, so it is refused.
//! - **`Origin`**: a request from a browser page of another origin (including `Origin: null`)
//!   is refused with 403 `forbidden_origin`, unless the origin was given to
//!   [`Access::allow_origin`]. Same-origin pages and clients sending no `Origin` (curl,
//!   servers) pass.
//! - **Authentication**, chosen explicitly: a bearer token ([`Access::bearer`]), Meshara
//!   identities ([`Access::peers`]: over Meshara, or RFC 9421 signed HTTP), an app-defined
//!   check ([`Access::custom`]), or deliberately nothing
//!   ([`Access::open_i_understand_the_risk`], which logs a warning).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use data_encoding::BASE64URL_NOPAD;
use meshara_core::NodeId;
use sha2::{Digest, Sha256};

use crate::error::error_response;
use crate::extract::{VerifiedPeer, VerifiedPeerRejection};
use crate::signature::{SignatureFailure, SignaturePolicy};

/// An app-defined authentication check for [`Access::custom`].
type CustomCheck = Arc<dyn Fn(&Parts) -> bool + Send + Sync>;

/// How [`routes()`](crate::routes) authenticates its callers, and which `Host` and `Origin`
/// values it answers. There is no default: an app states its choice.
///
/// ```
/// use axum::{Router, extract::FromRef};
/// use meshara_axum::Access;
/// use meshara_core::Node;
///
/// #[derive(Clone)]
/// struct AppState { node: Node }
/// impl FromRef<AppState> for Node {
///     fn from_ref(s: &AppState) -> Node { s.node.clone() }
/// }
///
/// fn app(state: AppState, token: String) -> Router {
///     // Callers send `Authorization: Bearer <token>`; the app's own page at
///     // https://notes.example may call the routes from a browser.
///     let access = Access::bearer(token)
///         .allow_host("notes.example")
///         .allow_origin("https://notes.example");
///     Router::new()
///         .nest("/meshara", meshara_axum::routes(access))
///         .with_state(state)
/// }
/// ```
#[derive(Clone)]
pub struct Access {
    auth: Auth,
    hosts: Vec<String>,
    origins: HashSet<String>,
    policy: SignaturePolicy,
}

#[derive(Clone)]
enum Auth {
    /// SHA-256 of the token (compared in constant time); `None` for an empty token, which
    /// never matches.
    Bearer(Option<[u8; 32]>),
    Peers(Arc<HashSet<NodeId>>),
    Custom(CustomCheck),
    Open,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.auth {
            Auth::Bearer(_) => "bearer token".to_owned(),
            Auth::Peers(peers) => format!("{} Meshara peers", peers.len()),
            Auth::Custom(_) => "custom".to_owned(),
            Auth::Open => "open".to_owned(),
        };
        f.debug_struct("Access")
            .field("auth", &auth)
            .field("hosts", &self.hosts)
            .field("origins", &self.origins)
            .finish_non_exhaustive()
    }
}

impl Access {
    fn with(auth: Auth) -> Self {
        Self {
            auth,
            hosts: Vec::new(),
            origins: HashSet::new(),
            policy: SignaturePolicy::default(),
        }
    }

    /// Callers must send `Authorization: Bearer <token>` (401 `unauthorized` otherwise). Use a
    /// long random token, e.g. [`Access::random_token`]; an empty token refuses everyone.
    ///
    /// Browsers cannot add this header to a WebSocket or `EventSource`; a browser client
    /// reads `/events` with `fetch()` (which can), or the app uses [`Access::custom`] with its
    /// own session cookie.
    pub fn bearer(token: impl AsRef<str>) -> Self {
        let token = token.as_ref();
        if token.is_empty() {
            tracing::error!("meshara routes: the bearer token is empty; every request is refused");
        } else if token.len() < 16 {
            tracing::warn!(
                "meshara routes: the bearer token has fewer than 16 characters and may be guessed"
            );
        }
        let digest = (!token.is_empty()).then(|| Sha256::digest(token.as_bytes()).into());
        Self::with(Auth::Bearer(digest))
    }

    /// A fresh random token for [`Access::bearer`]: 32 bytes from the OS CSPRNG, base64url.
    pub fn random_token() -> String {
        use rand_core::RngCore;
        let mut bytes = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut bytes);
        BASE64URL_NOPAD.encode(&bytes)
    }

    /// Only these Meshara identities may call: requests served over Meshara
    /// ([`serve`](crate::serve())) carry the NodeId proven by the connection; plain HTTP
    /// requests must be signed (RFC 9421, [`sign_request`](crate::sign_request)), which the
    /// routes verify with [`Access::signature_policy`]. 401 with the signature's problem when
    /// the caller is not authenticated, 403 `not_allowed` when it is not on the list.
    pub fn peers(allowed: impl IntoIterator<Item = NodeId>) -> Self {
        Self::with(Auth::Peers(Arc::new(allowed.into_iter().collect())))
    }

    /// The app decides: `check` sees the request's method, URI, headers and extensions (e.g.
    /// a session cookie, or an identity an outer layer put there) and returns whether the
    /// caller may use the routes (401 `unauthorized` otherwise).
    pub fn custom(check: impl Fn(&Parts) -> bool + Send + Sync + 'static) -> Self {
        Self::with(Auth::Custom(Arc::new(check)))
    }

    /// No authentication at all: anyone who can reach the port may read the node's decrypted
    /// messages and send as it. Only for a port nothing untrusted can reach (the `Host` and
    /// `Origin` checks still apply, which stops web pages, but not local programs or other
    /// users of the machine). Logs a warning when the routes are built.
    pub fn open_i_understand_the_risk() -> Self {
        Self::with(Auth::Open)
    }

    /// Also answer requests whose `Host` is `host` (a name, or `name:port` to allow only that
    /// port). Loopback names (`localhost`, `*.localhost`) and IP literals are always allowed.
    /// Call once per name.
    #[must_use]
    pub fn allow_host(mut self, host: impl AsRef<str>) -> Self {
        self.hosts.push(host.as_ref().trim().to_ascii_lowercase());
        self
    }

    /// Also answer browser requests from pages of `origin` (`scheme://host[:port]`, e.g.
    /// `https://app.example`). Same-origin requests are always allowed. Call once per origin.
    #[must_use]
    pub fn allow_origin(mut self, origin: impl AsRef<str>) -> Self {
        if let Some(origin) = normalize_origin(origin.as_ref()) {
            self.origins.insert(origin);
        } else {
            tracing::warn!(
                origin = origin.as_ref(),
                "meshara routes: ignoring a malformed origin"
            );
        }
        self
    }

    /// The signature checks used by [`Access::peers`] for plain HTTP callers (default:
    /// [`SignaturePolicy::default`]).
    #[must_use]
    pub fn signature_policy(mut self, policy: SignaturePolicy) -> Self {
        self.policy = policy;
        self
    }

    pub(crate) fn verifies_signatures(&self) -> Option<SignaturePolicy> {
        matches!(self.auth, Auth::Peers(_)).then_some(self.policy)
    }

    /// Logs what the routes accept; a warning when they accept anyone.
    pub(crate) fn announce(&self) {
        match &self.auth {
            Auth::Open => tracing::warn!(
                "meshara routes are OPEN (Access::open_i_understand_the_risk): anyone who can \
                 reach this port can read the node's messages and send as it"
            ),
            other => tracing::info!(
                auth = match other {
                    Auth::Bearer(_) => "bearer token",
                    Auth::Peers(_) => "Meshara peers",
                    _ => "custom",
                },
                extra_hosts = ?self.hosts,
                extra_origins = ?self.origins,
                "meshara routes mounted"
            ),
        }
    }

    /// The `Host` and `Origin` checks.
    fn check_host_and_origin(&self, parts: &Parts) -> Result<(), AccessRejection> {
        let host = request_host(parts);
        if let Some(host) = &host {
            if !self.host_allowed(host) {
                return Err(AccessRejection::ForbiddenHost(host.clone()));
            }
        }
        let Some(origin) = parts.headers.get(header::ORIGIN) else {
            return Ok(()); // not a browser, or a same-origin GET
        };
        let text = origin.to_str().unwrap_or("").trim();
        let Some(normalized) = normalize_origin(text) else {
            return Err(AccessRejection::ForbiddenOrigin(text.to_owned()));
        };
        if self.origins.contains(&normalized) {
            return Ok(());
        }
        // Same origin: the page's origin names the host the request went to.
        let same = host.as_deref().is_some_and(|h| same_origin(&normalized, h));
        if same {
            Ok(())
        } else {
            Err(AccessRejection::ForbiddenOrigin(normalized))
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let (name, port) = split_host(host);
        if name == "localhost" || name.ends_with(".localhost") || name.parse::<IpAddr>().is_ok() {
            return true;
        }
        self.hosts.iter().any(|allowed| {
            let (allowed_name, allowed_port) = split_host(allowed);
            allowed_name == name && (allowed_port.is_none() || allowed_port == port)
        })
    }

    /// The authentication check.
    fn authenticate(&self, parts: &Parts) -> Result<(), AccessRejection> {
        match &self.auth {
            Auth::Open => Ok(()),
            Auth::Bearer(expected) => {
                let given = bearer_token(&parts.headers).ok_or(AccessRejection::MissingToken)?;
                let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
                match expected {
                    Some(expected) if constant_time_eq(&digest, expected) => Ok(()),
                    _ => Err(AccessRejection::WrongToken),
                }
            }
            Auth::Peers(allowed) => {
                let peer = match parts.extensions.get::<VerifiedPeer>() {
                    Some(VerifiedPeer(peer)) => *peer,
                    None => {
                        return Err(AccessRejection::Unauthenticated(
                            match parts.extensions.get::<SignatureFailure>() {
                                Some(SignatureFailure(e)) => {
                                    VerifiedPeerRejection::Signature(e.clone())
                                }
                                None => VerifiedPeerRejection::Unauthenticated,
                            },
                        ));
                    }
                };
                if allowed.contains(&peer) {
                    Ok(())
                } else {
                    Err(AccessRejection::PeerNotAllowed(peer))
                }
            }
            Auth::Custom(check) => {
                if check(parts) {
                    Ok(())
                } else {
                    Err(AccessRejection::Refused)
                }
            }
        }
    }
}

/// Why [`routes()`](crate::routes) refused a caller (see [`Access`]).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AccessRejection {
    /// The `Host` is neither loopback, an IP literal nor allowed (DNS rebinding). 403
    /// `forbidden_host`.
    #[error(
        "host {0:?} is not served: only loopback names, IP literals and the app's configured \
         names are (Access::allow_host)"
    )]
    ForbiddenHost(String),
    /// The request came from a web page of another origin. 403 `forbidden_origin`.
    #[error(
        "requests from pages of origin {0:?} are not allowed: only same-origin pages and the \
         app's configured origins may call (Access::allow_origin)"
    )]
    ForbiddenOrigin(String),
    /// No `Authorization: Bearer` header. 401 `unauthorized`.
    #[error("this API needs `Authorization: Bearer <token>`")]
    MissingToken,
    /// The bearer token is wrong. 401 `unauthorized`.
    #[error("the bearer token is not valid")]
    WrongToken,
    /// No Meshara identity, or a refused signature. 401 with the reason's code.
    #[error(transparent)]
    Unauthenticated(VerifiedPeerRejection),
    /// A Meshara identity not on the list. 403 `not_allowed`.
    #[error("{0} may not use this API")]
    PeerNotAllowed(NodeId),
    /// The app's own check refused. 401 `unauthorized`.
    #[error("not authorized to use this API")]
    Refused,
}

impl IntoResponse for AccessRejection {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, code) = match &self {
            AccessRejection::ForbiddenHost(_) => (StatusCode::FORBIDDEN, "forbidden_host"),
            AccessRejection::ForbiddenOrigin(_) => (StatusCode::FORBIDDEN, "forbidden_origin"),
            AccessRejection::MissingToken
            | AccessRejection::WrongToken
            | AccessRejection::Refused => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AccessRejection::PeerNotAllowed(_) => (StatusCode::FORBIDDEN, "not_allowed"),
            AccessRejection::Unauthenticated(rejection) => {
                return rejection.clone().into_response();
            }
        };
        let mut response = error_response(status, code, message);
        if matches!(
            self,
            AccessRejection::MissingToken | AccessRejection::WrongToken
        ) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Middleware: the `Host`/`Origin` checks of `access`.
pub(crate) async fn host_and_origin(access: Arc<Access>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if let Err(rejection) = access.check_host_and_origin(&parts) {
        tracing::warn!(
            method = %parts.method,
            path = parts.uri.path(),
            reason = %rejection,
            "meshara routes: refused a cross-site or rebinding request"
        );
        return rejection.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

/// Middleware: the authentication of `access` (after signature verification, if any).
pub(crate) async fn authenticate(access: Arc<Access>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if let Err(rejection) = access.authenticate(&parts) {
        tracing::debug!(
            method = %parts.method,
            path = parts.uri.path(),
            reason = %rejection,
            "meshara routes: refused an unauthenticated request"
        );
        return rejection.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

/// Security headers for API answers, as a middleware for
/// [`axum::middleware::from_fn`]: every response gets `X-Content-Type-Options: nosniff` and
/// `Referrer-Policy: no-referrer`; HTML responses also get a `Content-Security-Policy`
/// (`default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none';
/// object-src 'none'`). Headers a handler already set are kept. [`routes()`](crate::routes)
/// applies it; apps may apply it to their own routes:
///
/// ```
/// use axum::{Router, routing::get, middleware::from_fn};
///
/// let app: Router = Router::new()
///     .route("/", get(|| async { axum::response::Html("<p>hi</p>") }))
///     .layer(from_fn(meshara_axum::security_headers));
/// # let _ = app;
/// ```
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let is_html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/html"));
    headers
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    headers
        .entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("no-referrer"));
    if is_html {
        headers
            .entry(header::CONTENT_SECURITY_POLICY)
            .or_insert(HeaderValue::from_static(
                "default-src 'self'; base-uri 'none'; form-action 'self'; \
                 frame-ancestors 'none'; object-src 'none'",
            ));
    }
    response
}

/// The host the request names: the URI's authority (HTTP/2, absolute-form) or `Host`.
fn request_host(parts: &Parts) -> Option<String> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .map(|h| h.to_str().unwrap_or("\u{fffd}").to_owned())
        })
        .map(|h| h.trim().to_ascii_lowercase())
}

/// `name[:port]` → (name without IPv6 brackets or trailing dot, port).
fn split_host(host: &str) -> (&str, Option<&str>) {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((name, tail)) => (name, tail.strip_prefix(':')),
            None => (rest, None),
        }
    } else if host.matches(':').count() == 1 {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    } else {
        (host, None)
    };
    (name.strip_suffix('.').unwrap_or(name), port)
}

/// `scheme://host[:port]` in lower case with the scheme's default port removed; `None` for
/// anything else (including `null`).
fn normalize_origin(origin: &str) -> Option<String> {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, authority) = origin.split_once("://")?;
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let (name, port) = split_host(authority);
    if name.is_empty() {
        return None;
    }
    let default = match scheme {
        "http" | "ws" => "80",
        "https" | "wss" => "443",
        _ => "",
    };
    let host = if authority.starts_with('[') {
        format!("[{name}]")
    } else {
        name.to_owned()
    };
    Some(match port {
        Some(p) if p != default => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Whether the normalized `origin` is the origin of a page on `host` (the request's `Host`).
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let (origin_name, origin_port) = split_host(authority);
    let (host_name, host_port) = split_host(host);
    origin_name == host_name && origin_port.unwrap_or(default) == host_port.unwrap_or(default)
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_normalize() {
        assert_eq!(
            normalize_origin("HTTP://LocalHost:80/").as_deref(),
            Some("http://localhost")
        );
        assert_eq!(
            normalize_origin("https://[::1]:8443").as_deref(),
            Some("https://[::1]:8443")
        );
        assert_eq!(normalize_origin("null"), None);
        assert_eq!(normalize_origin("http://a@b"), None);
    }

    #[test]
    fn same_origin_compares_host_and_port() {
        assert!(same_origin("http://localhost:8080", "localhost:8080"));
        assert!(same_origin("http://127.0.0.1", "127.0.0.1:80"));
        assert!(!same_origin("http://evil.example:8080", "localhost:8080"));
        assert!(!same_origin("http://localhost:9090", "localhost:8080"));
        assert!(same_origin("http://[::1]:8080", "[::1]:8080"));
    }

    #[test]
    fn hosts() {
        let access = Access::open_i_understand_the_risk().allow_host("notes.example:8443");
        for ok in [
            "localhost",
            "localhost:8080",
            "app.localhost:1",
            "127.0.0.1:8080",
            "[::1]:8080",
            "192.168.1.20",
            "notes.example:8443",
            "localhost.",
        ] {
            assert!(access.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "notes.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
        ] {
            assert!(!access.host_allowed(bad), "{bad}");
        }
    }
}
