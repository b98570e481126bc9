//! The plugins of one proxy: each module compiled once (engine cache), linked against the ABI,
//! pre-instantiated (`InstancePre`), and run in a small fixed set of VMs. A request is pinned to
//! one VM of each plugin for its life; a VM that faulted is rebuilt by the next request that
//! needs it, and the requests that had contexts on the old one see a new generation.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use wasmtime::{InstancePre, Linker, Module};

use super::defined_metrics::PluginStats;
use super::engine::{PluginEngine, PoolSize};
use super::shared_data::SharedData;
use super::state::{HostState, PluginShared};
use super::vm::{CallMetrics, Vm};
use super::{abi, FailureMode, HostSettings, PluginError, PluginSpec};
use crate::metrics::Metrics;

/// One VM slot: the VM (absent after a fault, until rebuilt) and its generation. Aligned to
/// two cache lines so the slots two worker threads use never share one.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct VmSlot {
    vm: Mutex<Option<Vm>>,
    generation: AtomicU64,
    /// The VM's tick period in ms (0: no ticks), set by the plugin, read by the ticker.
    tick_period_ms: Arc<AtomicU32>,
}

/// A locked, live VM of a given generation.
pub struct VmGuard<'a> {
    guard: MutexGuard<'a, Option<Vm>>,
    pub generation: u64,
}

impl std::fmt::Debug for VmGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmGuard")
            .field("generation", &self.generation)
            .finish()
    }
}

impl VmGuard<'_> {
    /// The VM (always present in a guard).
    pub fn vm(&mut self) -> Option<&mut Vm> {
        self.guard.as_mut()
    }

    /// Drops the VM after a fault; the next user rebuilds it.
    pub fn discard(&mut self) {
        *self.guard = None;
    }
}

/// A loaded plugin and its VMs.
pub struct RunningPlugin {
    pub spec: PluginSpec,
    shared: Arc<PluginShared>,
    pre: InstancePre<HostState>,
    slots: Vec<VmSlot>,
    deadline_ticks: u64,
    call_metrics: CallMetrics,
    metrics: Arc<Metrics>,
    /// The slot the next new thread gets.
    next_thread_slot: AtomicUsize,
}

impl std::fmt::Debug for RunningPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningPlugin")
            .field("name", &self.spec.name)
            .field("vms", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl RunningPlugin {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn failure_mode(&self) -> FailureMode {
        self.spec.failure_mode
    }

    /// Counts a request hit by this plugin's failure.
    pub fn count_failure(&self, mode: FailureMode) {
        let mode = match mode {
            FailureMode::Closed => "closed",
            FailureMode::Open => "open",
        };
        self.metrics
            .plugin_failure_outcomes
            .with_label_values(&[self.spec.name.as_str(), mode])
            .inc();
    }

    /// Counts an in-flight request given a new context after its VM was rebuilt under it.
    pub fn count_revival(&self) {
        self.metrics
            .plugin_context_revivals
            .with_label_values(&[self.spec.name.as_str()])
            .inc();
    }

    /// The VM slot a new request is pinned to: the one this plugin gave the worker thread it
    /// starts on (threads get slots in the order they first use the plugin), so with one VM per
    /// worker (the default) threads do not contend for VMs and each VM stays warm in its core's
    /// caches. Threads beyond the VM count share slots round robin.
    pub fn pick_slot(&self) -> usize {
        thread_local! {
            /// (plugin address, slot) for the plugins this thread has used.
            static SLOTS: std::cell::RefCell<Vec<(usize, usize)>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let key = self as *const Self as usize;
        SLOTS.with(|slots| {
            let mut slots = slots.borrow_mut();
            if let Some((_, slot)) = slots.iter().find(|(k, _)| *k == key) {
                return *slot;
            }
            let slot = self.next_thread_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
            slots.push((key, slot));
            slot
        })
    }

    fn start_vm(&self, slot: &VmSlot) -> Result<Vm, PluginError> {
        slot.tick_period_ms.store(0, Ordering::Relaxed);
        Vm::start(
            &self.pre,
            self.shared.clone(),
            usize::try_from(self.spec.memory_bytes).unwrap_or(usize::MAX),
            self.deadline_ticks,
            self.call_metrics.clone(),
            slot.tick_period_ms.clone(),
        )
    }

    /// Publishes the pending call metrics of every VM not busy right now.
    pub fn flush_metrics(&self) {
        for slot in &self.slots {
            if let Ok(mut guard) = slot.vm.try_lock() {
                if let Some(vm) = guard.as_mut() {
                    vm.flush_metrics();
                }
            }
        }
    }

    /// How many VM slots the plugin has.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The tick period slot `index`'s root context asked for, if any.
    pub fn tick_period(&self, index: usize) -> Option<Duration> {
        let ms = self
            .slots
            .get(index)?
            .tick_period_ms
            .load(Ordering::Relaxed);
        (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
    }

    /// Locks slot `index` (below [`Self::slot_count`], as [`Self::pick_slot`] gives), rebuilding
    /// its VM if a fault discarded it.
    pub fn lock(&self, index: usize) -> Result<VmGuard<'_>, PluginError> {
        let slot = self.slots.get(index).ok_or_else(|| {
            PluginError::Engine(format!(
                "plugin `{}` has no VM slot {index}",
                self.spec.name
            ))
        })?;
        let mut guard = slot.vm.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            let vm = self.start_vm(slot)?;
            *guard = Some(vm);
            slot.generation.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .plugin_vm_restarts
                .with_label_values(&[self.spec.name.as_str()])
                .inc();
            tracing::warn!(plugin = %self.spec.name, slot = index, "plugin VM rebuilt after a fault");
        }
        Ok(VmGuard {
            guard,
            generation: slot.generation.load(Ordering::Relaxed),
        })
    }
}

/// Every plugin of the proxy, by index (routes refer to them by index).
#[derive(Debug)]
pub struct PluginHost {
    pub plugins: Vec<Arc<RunningPlugin>>,
    pub shared_data: Arc<SharedData>,
    /// Plugin-defined metric series (registered once per process: shared across reloads).
    stats: Arc<PluginStats>,
    // Dropped last: it stops the epoch ticker. None when no plugin is configured.
    _engine: Option<PluginEngine>,
}

fn check_imports(
    linker_names: &[(&str, &str)],
    module: &Module,
    plugin: &str,
) -> Result<(), PluginError> {
    let missing: Vec<String> = module
        .imports()
        .filter(|i| !linker_names.contains(&(i.module(), i.name())))
        .map(|i| format!("`{}::{}`", i.module(), i.name()))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PluginError::MissingImport {
            plugin: plugin.to_string(),
            missing: missing.join(", "),
        })
    }
}

impl PluginHost {
    /// Compiles, checks and starts every plugin (all VMs run `on_vm_start`/`on_configure`).
    pub fn start(
        specs: &[PluginSpec],
        settings: &HostSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PluginError> {
        Self::start_after(specs, settings, metrics, None, None)
    }

    /// As [`Self::start`]; with `previous` (a reload), the new plugins keep the shared data
    /// (rate-limit buckets survive a reload; its bounds take the new settings) and the metric
    /// series of the host they replace. `cluster`: this process's link to the other instances.
    pub fn start_after(
        specs: &[PluginSpec],
        settings: &HostSettings,
        metrics: Arc<Metrics>,
        previous: Option<&PluginHost>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Result<Self, PluginError> {
        let vms: usize = specs.iter().map(|s| s.vms).sum();
        let pool = PoolSize {
            // Room for every VM twice over (rebuilds overlap) plus `check` runs.
            instances: u32::try_from(vms * 2 + 8).unwrap_or(u32::MAX),
            max_memory_bytes: specs
                .iter()
                .map(|s| s.memory_bytes)
                .max()
                .unwrap_or(64 << 20),
        };
        let (shared_data, stats) = match previous {
            Some(previous) => {
                previous.shared_data.reconfigure(
                    settings.shared_data_max_bytes,
                    settings.shared_data_ttl_by_prefix.clone(),
                );
                (previous.shared_data.clone(), previous.stats.clone())
            }
            None => (
                Arc::new(SharedData::new(
                    settings.shared_data_max_bytes,
                    settings.shared_data_ttl_by_prefix.clone(),
                )),
                Arc::new(PluginStats::new(metrics.registry().clone())),
            ),
        };
        if specs.is_empty() {
            return Ok(Self {
                plugins: Vec::new(),
                shared_data,
                stats,
                _engine: None,
            });
        }
        let engine = PluginEngine::new(pool, settings.module_cache_dir.clone())?;
        let mut linker = Linker::<HostState>::new(engine.engine());
        let provided = abi::link(&mut linker).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let mut plugins = Vec::new();
        // Several plugins may run the same module (with other configs): compile it once.
        let mut compiled: std::collections::HashMap<u128, Module> =
            std::collections::HashMap::new();
        for spec in specs {
            let wasm = std::fs::read(&spec.module).map_err(|source| PluginError::Read {
                plugin: spec.name.clone(),
                path: spec.module.display().to_string(),
                source,
            })?;
            let content = PluginEngine::content_hash(&wasm);
            let module = match compiled.entry(content) {
                std::collections::hash_map::Entry::Occupied(known) => known.get().clone(),
                std::collections::hash_map::Entry::Vacant(new) => new
                    .insert(engine.compile(&spec.name, &wasm, content)?)
                    .clone(),
            };
            let has_abi = module.exports().any(|e| {
                e.name() == "proxy_abi_version_0_2_1" || e.name() == "proxy_abi_version_0_2_0"
            });
            if !has_abi {
                return Err(PluginError::NoAbi {
                    plugin: spec.name.clone(),
                });
            }
            check_imports(&provided, &module, &spec.name)?;
            let pre = linker
                .instantiate_pre(&module)
                .map_err(|e| PluginError::Compile {
                    plugin: spec.name.clone(),
                    reason: format!("{e:#}"),
                })?;
            let shared = Arc::new(PluginShared {
                name: spec.name.clone(),
                root_id: spec.root_id.clone(),
                config: spec.config.clone(),
                vm_config: spec.vm_config.clone(),
                allowed_upstreams: spec.allowed_upstreams.clone(),
                shared_data: shared_data.clone(),
                stats: stats.clone(),
                cluster: cluster.clone(),
            });
            let plugin = RunningPlugin {
                spec: spec.clone(),
                shared,
                pre,
                slots: (0..spec.vms).map(|_| VmSlot::default()).collect(),
                deadline_ticks: PluginEngine::deadline_ticks(spec.cpu_deadline),
                call_metrics: CallMetrics::new(&spec.name, metrics.clone()),
                metrics: metrics.clone(),
                next_thread_slot: AtomicUsize::new(0),
            };
            for slot in &plugin.slots {
                let vm = plugin.start_vm(slot)?;
                *slot.vm.lock().unwrap_or_else(PoisonError::into_inner) = Some(vm);
            }
            plugins.push(Arc::new(plugin));
        }
        Ok(Self {
            plugins,
            shared_data,
            stats,
            _engine: Some(engine),
        })
    }
}
