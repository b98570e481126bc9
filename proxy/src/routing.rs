//! Request path -> route: the longest matching `path_prefix` wins. Pure and unit tested.

use std::sync::Arc;

use std::time::Duration;

use crate::upstream::Upstream;

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub path_prefix: String,
    pub upstream: Arc<Upstream>,
    /// `None`: responses on this route are never cached.
    pub cache: Option<CachePolicy>,
    /// Indexes of the plugins run on this route, in order.
    pub plugins: Vec<usize>,
}

/// How a route's responses are cached.
#[derive(Debug, Clone)]
pub struct CachePolicy {
    /// Query parameters that make the key (sorted); every other parameter is ignored.
    pub key_query_params: Vec<String>,
    /// The query parameter whose value tags an entry (e.g. `category`) for purges.
    pub tag_query_param: Option<String>,
    /// Freshness when the origin gives none.
    pub default_ttl: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// How long concurrent misses wait for the one request that fills the entry.
    pub lock_timeout: Duration,
}

#[derive(Debug, Default)]
pub struct Router {
    /// Longest prefix first.
    routes: Vec<Arc<Route>>,
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Self {
        let mut routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        Self { routes }
    }

    pub fn route(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|r| path.starts_with(&r.path_prefix))
    }

    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::PeerSettings;
    use std::time::Duration;

    fn route(name: &str, prefix: &str) -> Route {
        let d = Duration::from_secs(1);
        let settings = PeerSettings {
            idle_timeout: d,
            connect_timeout: d,
            total_connect_timeout: d,
            read_timeout: d,
            write_timeout: d,
            response_timeout: d,
            tcp_keepalive: None,
        };
        Route {
            name: name.into(),
            path_prefix: prefix.into(),
            upstream: Arc::new(Upstream::new("u", vec![], None, None, settings)),
            cache: None,
            plugins: vec![],
        }
    }

    #[test]
    fn longest_prefix_wins_and_unmatched_is_none() {
        let router = Router::new(vec![
            route("all", "/"),
            route("api", "/api/"),
            route("v1", "/api/v1/"),
        ]);
        assert_eq!(router.route("/api/v1/products").unwrap().name, "v1");
        assert_eq!(router.route("/api/v2").unwrap().name, "api");
        assert_eq!(router.route("/healthz").unwrap().name, "all");
        let narrow = Router::new(vec![route("api", "/api/")]);
        assert!(narrow.route("/other").is_none());
    }
}
