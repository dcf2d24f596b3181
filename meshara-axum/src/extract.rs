//! Extractors, each with its own rejection type (a status code and a JSON body).

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use meshara_core::{Node, NodeId};
use serde::de::DeserializeOwned;

use crate::error::error_response;
use crate::signature::{SignatureError, SignatureFailure};

/// The node, from the app's state (`Node: FromRef<S>`). Rejects with 503 once the node has
/// stopped, so handlers never work against a dead node.
#[derive(Debug, Clone)]
pub struct MesharaNode(pub Node);

/// Rejection of [`MesharaNode`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MesharaNodeRejection {
    /// The node is stopping or stopped.
    #[error("the Meshara node is stopped")]
    Stopped,
}

impl IntoResponse for MesharaNodeRejection {
    fn into_response(self) -> Response {
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_stopped",
            self.to_string(),
        )
    }
}

impl<S> FromRequestParts<S> for MesharaNode
where
    Node: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = MesharaNodeRejection;

    async fn from_request_parts(_parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let node = Node::from_ref(state);
        if node.is_running() {
            Ok(MesharaNode(node))
        } else {
            Err(MesharaNodeRejection::Stopped)
        }
    }
}

/// A JSON body whose rejections answer in the same JSON error format as the routes:
/// 415 without `Content-Type: application/json`, 400 for bad syntax, 422 for wrong fields,
/// 413 beyond the body limit.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

/// Rejection of [`JsonBody`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct JsonBodyRejection {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl From<JsonRejection> for JsonBodyRejection {
    fn from(r: JsonRejection) -> Self {
        let code = match &r {
            JsonRejection::JsonDataError(_) => "invalid_fields",
            JsonRejection::JsonSyntaxError(_) => "invalid_json",
            JsonRejection::MissingJsonContentType(_) => "wrong_content_type",
            JsonRejection::BytesRejection(_) => "body_unreadable",
            _ => "invalid_body",
        };
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            code
        };
        JsonBodyRejection {
            status,
            code,
            message: r.body_text(),
        }
    }
}

impl IntoResponse for JsonBodyRejection {
    fn into_response(self) -> Response {
        error_response(self.status, self.code, self.message)
    }
}

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = JsonBodyRejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(JsonBody(value))
    }
}

/// The Meshara identity of the caller: for requests served over Meshara ([`crate::serve`]), the
/// NodeId the connection proved in its TLS handshake; for plain HTTP behind
/// [`VerifySignaturesLayer`](crate::VerifySignaturesLayer), the `keyid` of a valid RFC 9421
/// signature. Rejects with the precise reason otherwise (missing, malformed, invalid, expired,
/// replayed signature, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedPeer(pub NodeId);

/// Rejection of [`VerifiedPeer`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum VerifiedPeerRejection {
    /// The request neither came over Meshara nor went through a
    /// [`VerifySignaturesLayer`](crate::VerifySignaturesLayer).
    #[error(
        "this route needs a caller authenticated by its Meshara identity: call it over Meshara, \
         or sign the request (RFC 9421) behind VerifySignaturesLayer"
    )]
    Unauthenticated,
    /// The HTTP message signature was missing or refused.
    #[error(transparent)]
    Signature(#[from] SignatureError),
}

impl IntoResponse for VerifiedPeerRejection {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            VerifiedPeerRejection::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            VerifiedPeerRejection::Signature(e) => e.status_and_code(),
        };
        let retry_after = match &self {
            VerifiedPeerRejection::Signature(e) => e.retry_after(),
            VerifiedPeerRejection::Unauthenticated => None,
        };
        let mut response = error_response(status, code, self.to_string());
        if let Some(value) = retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

impl<S: Send + Sync> FromRequestParts<S> for VerifiedPeer {
    type Rejection = VerifiedPeerRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(peer) = parts.extensions.get::<VerifiedPeer>() {
            return Ok(*peer);
        }
        match parts.extensions.get::<SignatureFailure>() {
            Some(SignatureFailure(e)) => Err(VerifiedPeerRejection::Signature(e.clone())),
            None => Err(VerifiedPeerRejection::Unauthenticated),
        }
    }
}
