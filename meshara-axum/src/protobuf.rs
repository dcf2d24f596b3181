//! Protobuf bodies: the [`Protobuf`] extractor and responder, and the content negotiation the
//! routes use to speak JSON or protobuf.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prost::Message as _;
use serde::Serialize;

use crate::error::{ErrorInfo, error_response};

/// The media type of protobuf bodies.
pub const PROTOBUF: &str = "application/x-protobuf";

/// A protobuf message as a request body or a response.
///
/// As an extractor it requires `Content-Type: application/x-protobuf` (or
/// `application/protobuf`), reads the body within axum's body limit (2 MiB unless
/// [`DefaultBodyLimit`](axum::extract::DefaultBodyLimit) says otherwise) and decodes it, with a
/// [`ProtobufRejection`] for each way that can fail. As a response it encodes the message with
/// that content type.
///
/// ```
/// use axum::{Router, routing::post};
/// use meshara_axum::Protobuf;
/// use meshara_axum::proto::{BroadcastRequest, BroadcastResponse};
///
/// async fn echo_topic(Protobuf(req): Protobuf<BroadcastRequest>) -> Protobuf<BroadcastResponse> {
///     Protobuf(BroadcastResponse { id: req.topic })
/// }
///
/// let app: Router = Router::new().route("/echo", post(echo_topic));
/// # let _ = app;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Protobuf<T>(pub T);

/// Rejection of [`Protobuf`]; answers with its status and a JSON error body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtobufRejection {
    /// The request does not say `Content-Type: application/x-protobuf` (415).
    #[error(
        "expected a request with `Content-Type: application/x-protobuf` (or \
         `application/protobuf`), got {0}"
    )]
    WrongContentType(String),
    /// The body is larger than the body limit (413).
    #[error("the body exceeds the body limit ({0})")]
    TooLarge(String),
    /// The body could not be read (400).
    #[error("the body could not be read: {0}")]
    Unreadable(String),
    /// The body is not a valid encoding of the expected message (400).
    #[error("the body is not a valid protobuf message: {0}")]
    Decode(#[from] prost::DecodeError),
}

impl ProtobufRejection {
    /// Status code and machine-readable code of this rejection.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ProtobufRejection::WrongContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "wrong_content_type")
            }
            ProtobufRejection::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ProtobufRejection::Unreadable(_) => (StatusCode::BAD_REQUEST, "body_unreadable"),
            ProtobufRejection::Decode(_) => (StatusCode::BAD_REQUEST, "invalid_protobuf"),
        }
    }
}

impl IntoResponse for ProtobufRejection {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        error_response(status, code, self.to_string())
    }
}

impl<S, T> FromRequest<S> for Protobuf<T>
where
    T: prost::Message + Default,
    S: Send + Sync,
{
    type Rejection = ProtobufRejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_protobuf(req.headers().get(header::CONTENT_TYPE)) {
            let got = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| "no Content-Type".to_owned(), |v| format!("{v:?}"));
            return Err(ProtobufRejection::WrongContentType(got));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(bytes_rejection)?;
        Ok(Protobuf(T::decode(bytes)?))
    }
}

fn bytes_rejection(r: BytesRejection) -> ProtobufRejection {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ProtobufRejection::TooLarge(r.body_text())
    } else {
        ProtobufRejection::Unreadable(r.body_text())
    }
}

impl<T: prost::Message> IntoResponse for Protobuf<T> {
    fn into_response(self) -> Response {
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF))],
            self.0.encode_to_vec(),
        )
            .into_response()
    }
}

/// Whether a `Content-Type` names protobuf.
pub(crate) fn is_protobuf(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .map(essence)
        .is_some_and(|t| t == PROTOBUF || t == "application/protobuf")
}

/// Whether a `Content-Type` names JSON.
pub(crate) fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .map(essence)
        .is_some_and(|t| t == "application/json" || t.ends_with("+json"))
}

/// The media type without parameters, lower-cased.
fn essence(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The answer format a client asked for: protobuf when its `Accept` header prefers it (by
/// q-value, then order), or when it sent a protobuf body without stating a preference; JSON
/// otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `application/json`.
    #[default]
    Json,
    /// `application/x-protobuf`.
    Protobuf,
}

impl Format {
    /// Negotiates from request headers. Explicit media types in `Accept` decide (by q-value,
    /// then order; `q=0` excludes). Wildcards (`*/*`, `application/*`) and a missing `Accept`
    /// express no preference: the answer then matches the request body's format.
    pub fn negotiate(headers: &HeaderMap) -> Format {
        let body_format = if is_protobuf(headers.get(header::CONTENT_TYPE)) {
            Format::Protobuf
        } else {
            Format::Json
        };
        let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
            return body_format;
        };
        let mut best: Option<(f32, Format)> = None;
        for entry in accept.split(',') {
            let mut params = entry.split(';');
            let media = params
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            let format = match media.as_str() {
                PROTOBUF | "application/protobuf" => Format::Protobuf,
                "application/json" => Format::Json,
                _ => continue,
            };
            let mut q = 1.0f32;
            for param in params {
                if let Some((name, value)) = param.split_once('=') {
                    if name.trim().eq_ignore_ascii_case("q") {
                        q = match value.trim().parse::<f32>() {
                            Ok(v) if (0.0..=1.0).contains(&v) => v,
                            _ => 0.0, // not a qvalue: ignore the entry
                        };
                    }
                }
            }
            if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, format));
            }
        }
        best.map_or(body_format, |(_, f)| f)
    }

    /// Answers with `json()` or `proto()`, whichever this format is (only that one is built).
    pub(crate) fn reply<J, P>(self, json: impl FnOnce() -> J, proto: impl FnOnce() -> P) -> Response
    where
        J: Serialize,
        P: prost::Message,
    {
        match self {
            Format::Json => axum::Json(json()).into_response(),
            Format::Protobuf => Protobuf(proto()).into_response(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Format {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Format::negotiate(&parts.headers))
    }
}

/// Middleware of the routes: error answers follow the negotiated format too, so a protobuf
/// client gets a `meshara.api.v1.Error` instead of JSON.
pub(crate) async fn negotiate_errors(request: Request, next: Next) -> Response {
    let format = Format::negotiate(request.headers());
    let response = next.run(request).await;
    if format == Format::Json {
        return response;
    }
    let Some(info) = response.extensions().get::<ErrorInfo>().cloned() else {
        return response;
    };
    // Keep status and headers (e.g. Retry-After); replace only the body and its type.
    let (mut parts, _) = response.into_parts();
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = crate::proto::Error {
        error: info.code,
        message: info.message,
    }
    .encode_to_vec();
    Response::from_parts(parts, axum::body::Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> Format {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        Format::negotiate(&headers)
    }

    #[test]
    fn accept_headers_choose_by_q_then_order() {
        assert_eq!(accept("application/x-protobuf"), Format::Protobuf);
        assert_eq!(accept("application/protobuf"), Format::Protobuf);
        assert_eq!(accept("application/json"), Format::Json);
        assert_eq!(accept("*/*"), Format::Json);
        assert_eq!(accept("Application/X-Protobuf"), Format::Protobuf);
        assert_eq!(accept("application/x-protobuf;Q=0"), Format::Json);
        assert_eq!(accept("application/x-protobuf;q=NaN"), Format::Json);
        assert_eq!(accept("application/x-protobuf;q=inf"), Format::Json);
        assert_eq!(
            accept("application/json;q=0.9, application/x-protobuf;q=0.95"),
            Format::Protobuf
        );
        assert_eq!(
            accept("application/json;q=0.5, application/x-protobuf"),
            Format::Protobuf
        );
        assert_eq!(
            accept("application/x-protobuf;q=0.1, application/json"),
            Format::Json
        );
        assert_eq!(
            accept("application/x-protobuf, application/json"),
            Format::Protobuf
        );
        assert_eq!(accept("application/x-protobuf;q=0"), Format::Json);
        assert_eq!(accept("text/html"), Format::Json);
        assert_eq!(accept(""), Format::Json);
    }

    #[test]
    fn protobuf_body_without_accept_answers_protobuf() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf; charset=binary"),
        );
        assert_eq!(Format::negotiate(&headers), Format::Protobuf);
        // Wildcards state no preference: the body's format wins (curl sends */* by default).
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert_eq!(Format::negotiate(&headers), Format::Protobuf);
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert_eq!(Format::negotiate(&headers), Format::Json);
    }
}
