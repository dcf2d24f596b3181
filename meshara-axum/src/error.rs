//! The error answer of the routes: a status code and a JSON [`ErrorBody`](crate::ErrorBody).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meshara_core::{DeliveryError, QueryError, SendError};

use crate::api::ErrorBody;

/// Why a route failed. Every variant answers with a status code and a JSON body
/// `{"error": <code>, "message": <text>}`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed (code, message).
    #[error("{1}")]
    BadRequest(&'static str, String),
    /// A NodeId of the right form that is no Ed25519 public key: no node can have it.
    #[error("no node has NodeId {0:?}: it is not an Ed25519 public key")]
    NotAKey(String),
    /// The node refused to send.
    #[error(transparent)]
    Send(SendError),
    /// The message was not acknowledged.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    /// The query failed.
    #[error(transparent)]
    Query(QueryError),
}

impl ApiError {
    /// The status code and machine-readable code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(code, _) => (StatusCode::BAD_REQUEST, code),
            ApiError::NotAKey(_) => (StatusCode::NOT_FOUND, "recipient_not_found"),
            ApiError::Send(e) | ApiError::Query(QueryError::Send(e)) => send_status(e),
            ApiError::Delivery(DeliveryError::Unacknowledged { .. }) => {
                (StatusCode::GATEWAY_TIMEOUT, "not_acknowledged")
            }
            ApiError::Delivery(DeliveryError::NotFound { .. })
            | ApiError::Query(QueryError::NotFound { .. }) => {
                (StatusCode::NOT_FOUND, "recipient_not_found")
            }
            ApiError::Query(QueryError::Timeout { .. }) => {
                (StatusCode::GATEWAY_TIMEOUT, "query_timeout")
            }
            ApiError::Query(QueryError::Rejected { .. }) => {
                (StatusCode::BAD_GATEWAY, "query_rejected")
            }
            ApiError::Delivery(_) | ApiError::Query(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "node_stopped")
            }
        }
    }
}

fn send_status(e: &SendError) -> (StatusCode, &'static str) {
    match e {
        SendError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        SendError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_message"),
        SendError::OutboxFull(_) => (StatusCode::SERVICE_UNAVAILABLE, "outbox_full"),
        SendError::Banned(_) => (StatusCode::FORBIDDEN, "banned"),
        SendError::ToSelf => (StatusCode::BAD_REQUEST, "to_self"),
        SendError::NoRoute(_) => (StatusCode::NOT_FOUND, "no_route"),
        SendError::Transport(_) => (StatusCode::BAD_GATEWAY, "transport"),
        SendError::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "node_stopped"),
        SendError::TopicLimit(_) => (StatusCode::TOO_MANY_REQUESTS, "topic_limit"),
        SendError::TooFewRelays { .. } => (StatusCode::SERVICE_UNAVAILABLE, "too_few_relays"),
        // The node's configuration, not a passing state: retrying does not help.
        SendError::NoTransport(_) => (StatusCode::CONFLICT, "no_transport"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "send_failed"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        error_response(status, code, self.to_string())
    }
}

/// The code and message of an error answer, kept in the response's extensions so that the
/// routes can re-encode it in the format the client negotiated.
#[derive(Debug, Clone)]
pub(crate) struct ErrorInfo {
    pub(crate) code: String,
    pub(crate) message: String,
}

pub(crate) fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    let info = ErrorInfo {
        code: code.to_owned(),
        message,
    };
    let mut response = (
        status,
        Json(ErrorBody {
            error: info.code.clone(),
            message: info.message.clone(),
        }),
    )
        .into_response();
    response.extensions_mut().insert(info);
    response
}
