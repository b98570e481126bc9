//! Metrics: `proxy_define_metric` and friends over the host's Prometheus registry
//! (`plugin/defined_metrics.rs`). A definition the registry refuses (another kind under the same name)
//! still returns Ok - the SDK accepts nothing else - with an id whose updates fail NotFound.

use wasmtime::Caller;

use super::{status, Registrar};
use crate::plugin::defined_metrics::{MetricKind, StatsError};
use crate::plugin::memory;
use crate::plugin::state::HostState;

/// The id of a definition the registry refused.
const REFUSED: u32 = u32::MAX;

fn code(result: Result<(), StatsError>) -> u32 {
    match result {
        Ok(()) => status::OK,
        Err(StatsError::NotFound(_)) => status::NOT_FOUND,
        Err(StatsError::BadArgument(_)) => status::BAD_ARGUMENT,
    }
}

pub fn link(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env(
        "proxy_define_metric",
        |mut caller: Caller<'_, HostState>, kind: u32, name: u32, name_len: u32, id_out: u32| -> wasmtime::Result<u32> {
            let name = memory::read_string(&caller, name, name_len)?;
            let plugin = caller.data().plugin.clone();
            let id = match MetricKind::from_abi(kind) {
                Some(kind) => plugin.stats.define(&plugin.name, kind, &name).unwrap_or_else(|e| {
                    tracing::warn!(target: "plugin", plugin = %plugin.name, metric = %name, error = %e, "metric not defined");
                    REFUSED
                }),
                None => REFUSED,
            };
            memory::write_u32(&mut caller, id_out, id)?;
            Ok(status::OK)
        },
    )?;
    r.env(
        "proxy_increment_metric",
        |mut caller: Caller<'_, HostState>, id: u32, offset: i64| -> u32 {
            code(
                caller
                    .data_mut()
                    .series(id)
                    .and_then(|s| s.increment(offset)),
            )
        },
    )?;
    r.env(
        "proxy_record_metric",
        |mut caller: Caller<'_, HostState>, id: u32, value: u64| -> u32 {
            match caller.data_mut().series(id) {
                Ok(series) => {
                    series.record(value);
                    status::OK
                }
                Err(_) => status::NOT_FOUND,
            }
        },
    )?;
    r.env(
        "proxy_get_metric",
        |mut caller: Caller<'_, HostState>, id: u32, value_out: u32| -> wasmtime::Result<u32> {
            let value = caller.data_mut().series(id).and_then(|s| s.get());
            match value {
                Ok(v) => {
                    memory::write_u64(&mut caller, value_out, v)?;
                    Ok(status::OK)
                }
                Err(e) => Ok(code(Err(e))),
            }
        },
    )
}
