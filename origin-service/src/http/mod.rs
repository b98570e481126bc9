//! The catalog HTTP API: routing, per-route handlers with one deadline each, and request metrics.
//! Transport (TLS, keep-alive, connection limits) lives in `server`.

pub mod cursor;
pub mod error;
pub mod params;
pub mod representation;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response};
use http_body_util::Full;
use serde::Serialize;

use crate::catalog::{self, categories, detail, listing};
use crate::config::OriginConfig;
use crate::db::Database;
use crate::item_cache::ItemCache;
use crate::metrics::Metrics;
use error::ApiError;
use representation::Representation;

/// The routes the API serves; `label` is the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Products,
    Product(&'a str),
    Categories,
    Healthz,
    Metrics,
    Unknown,
}

impl<'a> Route<'a> {
    fn of(path: &'a str) -> Self {
        match path {
            "/api/v1/products" => Route::Products,
            "/api/v1/categories" => Route::Categories,
            "/healthz" => Route::Healthz,
            "/metrics" => Route::Metrics,
            _ => path
                .strip_prefix("/api/v1/products/")
                .map_or(Route::Unknown, Route::Product),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Route::Products => "products",
            Route::Product(_) => "product",
            Route::Categories => "categories",
            Route::Healthz => "healthz",
            Route::Metrics => "metrics",
            Route::Unknown => "unknown",
        }
    }
}

#[derive(Serialize)]
struct ListingBody<'a> {
    category: &'a str,
    items: &'a [listing::ListingItem],
    next_cursor: Option<String>,
}

#[derive(Serialize)]
struct CategoriesBody<'a> {
    categories: &'a [categories::CategorySummary],
}

/// Everything a request needs: config, database, item cache, metrics.
#[derive(Debug)]
pub struct Api {
    config: Arc<OriginConfig>,
    db: Database,
    items: ItemCache,
    metrics: Arc<Metrics>,
    products_cache_control: HeaderValue,
    product_cache_control: HeaderValue,
    categories_cache_control: HeaderValue,
}

impl Api {
    pub fn new(config: Arc<OriginConfig>, db: Database, metrics: Arc<Metrics>) -> Self {
        let cc = &config.cache_control;
        Self {
            items: ItemCache::new(&config.item_cache, metrics.clone()),
            products_cache_control: representation::cache_control(cc.products_s_maxage),
            product_cache_control: representation::cache_control(cc.product_s_maxage),
            categories_cache_control: representation::cache_control(cc.categories_s_maxage),
            config,
            db,
            metrics,
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Answers one request; never fails (errors become JSON error responses).
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let route = Route::of(request.uri().path());
        let response = match self.dispatch(route, &request).await {
            Ok(response) => response,
            Err(err) => {
                if let ApiError::DeadlineExceeded(_) = err {
                    self.metrics
                        .deadline_exceeded
                        .with_label_values(&[route.label()])
                        .inc();
                }
                err.to_response()
            }
        };
        let status = response.status();
        self.metrics
            .requests
            .with_label_values(&[route.label(), status.as_str()])
            .inc();
        self.metrics
            .request_seconds
            .with_label_values(&[route.label()])
            .observe(started.elapsed().as_secs_f64());
        response
    }

    async fn dispatch<B>(
        &self,
        route: Route<'_>,
        request: &Request<B>,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        if route == Route::Unknown {
            return Err(ApiError::NoRoute(request.uri().path().to_string()));
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return Err(ApiError::MethodNotAllowed(request.method().clone()));
        }
        let headers = request.headers();
        match route {
            Route::Products => {
                let query = params::listing_query(request.uri().query(), &self.config.catalog)?;
                let rep = self.within_deadline(self.products(&query)).await?;
                Ok(rep.respond(headers, &self.products_cache_control))
            }
            Route::Product(segment) => {
                let id = params::product_id(segment)?;
                let rep = self.within_deadline(self.product(id)).await?;
                Ok(rep.respond(headers, &self.product_cache_control))
            }
            Route::Categories => {
                let rep = self.within_deadline(self.categories()).await?;
                Ok(rep.respond(headers, &self.categories_cache_control))
            }
            Route::Healthz => Ok(plain(
                Bytes::from_static(b"{\"status\":\"ok\"}"),
                "application/json",
            )),
            Route::Metrics => {
                self.db.observe_pool();
                self.items.observe().await;
                Ok(plain(
                    Bytes::from(self.metrics.render()),
                    "text/plain; version=0.0.4",
                ))
            }
            Route::Unknown => Err(ApiError::NoRoute(request.uri().path().to_string())),
        }
    }

    /// One deadline for the whole database work of a request (pool acquire + queries).
    async fn within_deadline<T>(
        &self,
        work: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let deadline = self.config.http.request_deadline;
        tokio::time::timeout(deadline, work)
            .await
            .map_err(|_| ApiError::DeadlineExceeded(deadline))?
    }

    async fn products(&self, query: &listing::ListingQuery) -> Result<Representation, ApiError> {
        let page = listing::list(&self.db, query).await?;
        let body = ListingBody {
            category: &query.category,
            items: &page.items,
            next_cursor: page.next_after_id.map(cursor::encode),
        };
        render(&body)
    }

    async fn product(&self, id: i64) -> Result<Arc<Representation>, ApiError> {
        let concurrency = self.config.catalog.detail_fanout_concurrency;
        let load = async {
            let product = detail::fetch(&self.db, id, concurrency).await?;
            render(&product).map(Arc::new).map_err(LoadError::Render)
        };
        self.items
            .get_or_load(id, load)
            .await
            .map_err(|err| match err.as_ref() {
                LoadError::Catalog(catalog) => ApiError::from(catalog),
                LoadError::Render(api) => ApiError::Internal(api.to_string()),
            })
    }

    async fn categories(&self) -> Result<Representation, ApiError> {
        let rows = categories::list(&self.db).await?;
        render(&CategoriesBody { categories: &rows })
    }
}

/// Why loading a detail for the item cache failed (shared between coalesced waiters).
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error(transparent)]
    Render(ApiError),
}

fn render<T: Serialize>(value: &T) -> Result<Representation, ApiError> {
    Representation::json(value).map_err(|err| ApiError::Internal(err.to_string()))
}

fn plain(body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::Route;

    #[test]
    fn routes() {
        assert_eq!(Route::of("/api/v1/products"), Route::Products);
        assert_eq!(Route::of("/api/v1/products/12"), Route::Product("12"));
        assert_eq!(Route::of("/api/v1/products/"), Route::Product(""));
        assert_eq!(Route::of("/api/v1/categories"), Route::Categories);
        assert_eq!(Route::of("/api/v2/products"), Route::Unknown);
    }
}
