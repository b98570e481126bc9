//! Whether, and for how long, a response may be stored in the shared cache: `Cache-Control`
//! (`s-maxage`, `max-age`, `no-store`, `private`, `no-cache`) first, `Expires` next, the route's
//! `default_ttl` last (200 only). `Set-Cookie` and `Vary: *` responses are never stored.
//! Stale windows come from the response's directives, else from the route.

use std::time::{Duration, SystemTime};

use http::header::{SET_COOKIE, VARY};
use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::filters::calculate_fresh_until;
use pingora::cache::{CacheMeta, CacheMetaDefaults, NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;

use crate::routing::CachePolicy;

/// No status is cacheable by default: freshness comes from the response or the route.
const NO_DEFAULTS: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

pub fn response_cacheability(response: &ResponseHeader, policy: &CachePolicy) -> RespCacheable {
    if response.headers.contains_key(SET_COOKIE) {
        return RespCacheable::Uncacheable(NoCacheReason::Custom("set-cookie"));
    }
    let vary_star = response.headers.get_all(VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim() == "*"))
    });
    if vary_star {
        return RespCacheable::Uncacheable(NoCacheReason::Custom("vary-star"));
    }
    let cc = CacheControl::from_resp_headers(response);
    if cc.as_ref().is_some_and(|cc| cc.no_store() || cc.private()) {
        return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
    }
    let now = SystemTime::now();
    let explicit = calculate_fresh_until(now, cc.as_ref(), response, false, &NO_DEFAULTS);
    let fresh_until = match explicit {
        Some(t) => t,
        None if response.status == 200 => now + policy.default_ttl,
        None => return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache),
    };
    let directive = |read: fn(&CacheControl) -> pingora::Result<Option<u32>>| {
        cc.as_ref().and_then(|cc| read(cc).ok().flatten())
    };
    let swr = directive(CacheControl::stale_while_revalidate)
        .unwrap_or(secs(policy.stale_while_revalidate));
    let sie = directive(CacheControl::stale_if_error).unwrap_or(secs(policy.stale_if_error));
    let mut header = response.clone();
    if let Some(cc) = &cc {
        cc.strip_private_headers(&mut header);
    }
    RespCacheable::Cacheable(CacheMeta::new(fresh_until, now, swr, sie, header))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CachePolicy {
        CachePolicy {
            key_query_params: vec![],
            tag_query_param: None,
            default_ttl: Duration::from_secs(10),
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(300),
            lock_timeout: Duration::from_secs(1),
        }
    }

    fn response(status: u16, headers: &[(&'static str, &'static str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(*k, *v).unwrap();
        }
        r
    }

    fn ttl(r: &RespCacheable) -> Option<i64> {
        match r {
            RespCacheable::Cacheable(meta) => Some(
                meta.fresh_until()
                    .duration_since(SystemTime::now())
                    .map_or(-1, |d| d.as_secs_f64().round() as i64),
            ),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn s_maxage_wins_then_default_ttl() {
        let p = policy();
        let with = response(200, &[("cache-control", "public, max-age=5, s-maxage=60")]);
        assert_eq!(ttl(&response_cacheability(&with, &p)), Some(60));
        assert_eq!(
            ttl(&response_cacheability(&response(200, &[]), &p)),
            Some(10)
        );
    }

    #[test]
    fn never_stored() {
        let p = policy();
        for headers in [
            vec![("cache-control", "no-store")],
            vec![("cache-control", "private, max-age=60")],
            vec![
                ("cache-control", "public, s-maxage=60"),
                ("set-cookie", "a=b"),
            ],
            vec![("vary", "*")],
        ] {
            assert_eq!(
                ttl(&response_cacheability(&response(200, &headers), &p)),
                None,
                "{headers:?}"
            );
        }
        assert_eq!(ttl(&response_cacheability(&response(502, &[]), &p)), None);
    }

    #[test]
    fn no_cache_is_stored_but_stale_at_once() {
        let r = response(200, &[("cache-control", "no-cache")]);
        let got = ttl(&response_cacheability(&r, &policy()));
        assert!(got.is_some_and(|t| t <= 0), "{got:?}");
    }

    #[test]
    fn stale_windows_from_directives_else_route() {
        let p = policy();
        let r = response(
            200,
            &[("cache-control", "s-maxage=1, stale-while-revalidate=7")],
        );
        let RespCacheable::Cacheable(meta) = response_cacheability(&r, &p) else {
            panic!()
        };
        assert_eq!(meta.stale_while_revalidate_sec(), 7);
        assert_eq!(meta.stale_if_error_sec(), 300);
    }
}
