//! API errors: the broker's error code (its protocol name, e.g. `NOT_FOUND`), a message,
//! and the HTTP status that goes with the code. Every rejection axum makes of a request
//! (malformed JSON, a bad query or path) becomes one of these, so no client mistake is
//! answered with a 500 or a body that is not JSON.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use squall_proto::ErrorCode;

use super::types::ErrorBody;

/// An error answer of the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str_name())]
pub struct ApiError {
    /// The broker's error code.
    pub code: ErrorCode,
    /// What was wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// A field of the request is invalid.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    /// The broker cannot answer now (recovering, shutting down).
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::ShuttingDown, message)
    }

    /// The HTTP status of this error's code.
    pub fn status(&self) -> StatusCode {
        use ErrorCode as C;
        match self.code {
            C::Unauthenticated => StatusCode::UNAUTHORIZED,
            C::Forbidden => StatusCode::FORBIDDEN,
            C::NotFound => StatusCode::NOT_FOUND,
            C::QueueFull | C::TooManyRequests | C::TooManyConnections => {
                StatusCode::TOO_MANY_REQUESTS
            }
            C::PayloadTooLarge | C::AnswerTooLarge | C::FrameTooLarge => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            C::ShuttingDown | C::Storage | C::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            C::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.as_str_name().to_owned(),
            message: self.message.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.body())).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        let what = match r {
            JsonRejection::MissingJsonContentType(_) => {
                "the body must be JSON with `Content-Type: application/json`".to_owned()
            }
            other => format!("the body is not valid here: {}", other.body_text()),
        };
        ApiError::bad_request(what)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request(format!("bad query string: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::bad_request(format!("bad path: {}", r.body_text()))
    }
}
