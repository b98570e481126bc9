//! API errors and their JSON form: `{"error": {"status": 400, "code": "bad_request", "message": …}}`.
//! Errors are never cached (`Cache-Control: no-store`).

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::catalog::CatalogError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no resource at {0}")]
    NoRoute(String),
    #[error("product {0} not found")]
    ProductNotFound(i64),
    #[error("method {0} is not allowed here; use GET or HEAD")]
    MethodNotAllowed(Method),
    #[error("the request deadline of {} ms passed before the catalog answered", .0.as_millis())]
    DeadlineExceeded(Duration),
    #[error("the catalog database is unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    status: u16,
    code: &'a str,
    message: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NoRoute(_) | ApiError::ProductNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::DeadlineExceeded(_) | ApiError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NoRoute(_) => "not_found",
            ApiError::ProductNotFound(_) => "product_not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::DeadlineExceeded(_) => "deadline_exceeded",
            ApiError::Unavailable(_) => "database_unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let status = self.status();
        let body = Body {
            error: Detail {
                status: status.as_u16(),
                code: self.code(),
                message: self.to_string(),
            },
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(bytes)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            ApiError::MethodNotAllowed(_) => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            ApiError::DeadlineExceeded(_) | ApiError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

impl From<&CatalogError> for ApiError {
    fn from(err: &CatalogError) -> Self {
        match err {
            CatalogError::NotFound(id) => ApiError::ProductNotFound(*id),
            CatalogError::Db(db) => match db {
                sqlx::Error::PoolTimedOut => ApiError::Unavailable(
                    "no database connection became free within database.pool.acquire_timeout"
                        .into(),
                ),
                sqlx::Error::PoolClosed => ApiError::Unavailable("the pool is closed".into()),
                sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed | sqlx::Error::Database(_) => {
                    tracing::warn!(error = %db, "database failure");
                    ApiError::Unavailable(db.to_string())
                }
                other => {
                    tracing::error!(error = %other, "catalog query failed");
                    ApiError::Internal("catalog query failed".into())
                }
            },
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(err: CatalogError) -> Self {
        ApiError::from(&err)
    }
}
