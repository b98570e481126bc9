//! `proxy_call_foreign_function`: host functions beyond the ABI, by name. Plugins call them
//! through their SDK (`call_foreign_function` in Rust and AssemblyScript); a host that lacks
//! one answers NotFound (1), which plugins treat as "not offered here" (Envoy, or no `redis:`).
//!
//! | name | arguments | result |
//! |---|---|---|
//! | `edge.cluster_rate_limit` | rate per second (f64 LE), burst (u64 LE), bucket key (UTF-8) | allowed (u8), remaining, reset seconds, retry-after seconds (u64 LE each): 25 bytes |
//!
//! `edge.cluster_rate_limit` takes a token from a cluster-wide bucket (`cluster/leases.rs`):
//! answered from memory, never waiting on Redis. Any other name: NotFound.

use wasmtime::Caller;

use super::{status, Registrar};
use crate::cluster::leases::Limit;
use crate::plugin::memory;
use crate::plugin::state::HostState;

pub const CLUSTER_RATE_LIMIT: &str = "edge.cluster_rate_limit";

/// The arguments of `edge.cluster_rate_limit`: `None` when malformed.
pub fn parse_rate_limit_args(args: &[u8]) -> Option<(Limit, &str)> {
    let rate = f64::from_le_bytes(args.get(..8)?.try_into().ok()?);
    let burst = u64::from_le_bytes(args.get(8..16)?.try_into().ok()?);
    let key = std::str::from_utf8(args.get(16..)?).ok()?;
    (rate.is_finite() && rate > 0.0 && burst > 0 && !key.is_empty()).then_some((
        Limit {
            rate_per_second: rate,
            burst,
        },
        key,
    ))
}

pub fn link(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env(
        "proxy_call_foreign_function",
        |mut caller: Caller<'_, HostState>,
         name: u32,
         name_len: u32,
         args: u32,
         args_len: u32,
         out: u32,
         out_len: u32|
         -> wasmtime::Result<u32> {
            // Read in place (no copies): this runs once per request of a cluster rule.
            let verdict = memory::with_guest(
                &mut caller,
                [(name, name_len), (args, args_len)],
                |[name, args], state| {
                    if name != CLUSTER_RATE_LIMIT.as_bytes() {
                        return Err(status::NOT_FOUND);
                    }
                    let cluster = state.plugin.cluster.as_ref().ok_or(status::NOT_FOUND)?;
                    let (limit, key) = parse_rate_limit_args(args).ok_or(status::BAD_ARGUMENT)?;
                    Ok(cluster.take(key, limit))
                },
            )?;
            let verdict = match verdict {
                Ok(verdict) => verdict,
                Err(status) => return Ok(status),
            };
            let mut answer = [0u8; 25];
            answer[0] = u8::from(verdict.allowed);
            for (i, value) in [
                verdict.remaining,
                verdict.reset_seconds,
                verdict.retry_after_seconds,
            ]
            .into_iter()
            .enumerate()
            {
                answer[1 + 8 * i..9 + 8 * i].copy_from_slice(&value.to_le_bytes());
            }
            memory::give(&mut caller, &answer, out, out_len)?;
            Ok(status::OK)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(rate: f64, burst: u64, key: &str) -> Vec<u8> {
        let mut out = rate.to_le_bytes().to_vec();
        out.extend_from_slice(&burst.to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        out
    }

    #[test]
    fn arguments_are_checked() {
        let good = args(100.0, 50, "api/1.2.3.4");
        let (limit, key) = parse_rate_limit_args(&good).unwrap();
        assert_eq!(
            (limit.rate_per_second, limit.burst, key),
            (100.0, 50, "api/1.2.3.4")
        );
        for bad in [
            args(0.0, 50, "k"),
            args(f64::NAN, 50, "k"),
            args(1.0, 0, "k"),
            args(1.0, 1, ""),
            vec![1, 2, 3],
        ] {
            assert!(parse_rate_limit_args(&bad).is_none(), "{bad:?}");
        }
    }
}
