//! The one wasmtime engine of the process: epoch interruption (a ticker thread advances the
//! epoch every [`EPOCH_TICK`], so a call's CPU deadline is a number of ticks), the pooling
//! allocator (VMs are created and rebuilt from `InstancePre` without mmap churn), and compiled
//! modules cached on disk under their content hash.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig};

use super::PluginError;

/// How often the epoch advances: the resolution of CPU deadlines (a deadline is rounded up to
/// whole ticks). Coarse enough that the ticker thread costs nothing measurable.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Sizing of the instance pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolSize {
    /// VMs that may exist at once (all plugins, plus rebuilds and `check` runs).
    pub instances: u32,
    /// Largest linear memory of any VM, in bytes.
    pub max_memory_bytes: u64,
}

/// The engine and its epoch ticker (stopped when the engine is dropped).
pub struct PluginEngine {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    ticking: Arc<AtomicBool>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine")
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
    }
}

fn engine_error(e: impl std::fmt::Display) -> PluginError {
    PluginError::Engine(e.to_string())
}

impl PluginEngine {
    pub fn new(pool: PoolSize, cache_dir: Option<PathBuf>) -> Result<Self, PluginError> {
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_core_instances(pool.instances)
            .total_memories(pool.instances)
            .total_tables(pool.instances)
            .max_memory_size(usize::try_from(pool.max_memory_bytes).map_err(engine_error)?);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        // Profiling aid (plugins/README.md): perf names JIT-compiled wasm functions.
        if std::env::var_os("EDGE_WASM_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(engine_error)?;
        let ticking = Arc::new(AtomicBool::new(true));
        let (ticker_engine, running) = (engine.clone(), ticking.clone());
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while running.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(engine_error)?;
        Ok(Self {
            engine,
            cache_dir,
            ticking,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Ticks for a CPU deadline (at least one).
    pub fn deadline_ticks(deadline: Duration) -> u64 {
        deadline.as_micros().div_ceil(EPOCH_TICK.as_micros()).max(1) as u64
    }

    /// The content hash modules are known by (in the disk cache and across plugins).
    pub fn content_hash(wasm: &[u8]) -> u128 {
        xxhash_rust::xxh3::xxh3_128(wasm)
    }

    /// Compiles `wasm` (whose [`Self::content_hash`] is `content`), or loads it from the cache.
    pub fn compile(&self, plugin: &str, wasm: &[u8], content: u128) -> Result<Module, PluginError> {
        let compile_error = |e: wasmtime::Error| PluginError::Compile {
            plugin: plugin.to_string(),
            reason: format!("{e:#}"),
        };
        let Some(dir) = &self.cache_dir else {
            return Module::new(&self.engine, wasm).map_err(compile_error);
        };
        let path = self.cache_path(dir, content);
        if let Some(module) = self.load_cached(&path) {
            return Ok(module);
        }
        let module = Module::new(&self.engine, wasm).map_err(compile_error)?;
        if let Err(e) = store_cached(&module, &path) {
            tracing::warn!(plugin, path = %path.display(), error = %e, "could not cache the compiled module");
        }
        Ok(module)
    }

    /// `<dir>/<content hash>-<engine hash>.cwasm`: a new module or another engine configuration
    /// (wasmtime version, settings) never reads a stale artifact.
    fn cache_path(&self, dir: &Path, content: u128) -> PathBuf {
        use std::hash::{Hash, Hasher};
        let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut engine_hash);
        dir.join(format!(
            "{content:032x}-{:016x}.cwasm",
            engine_hash.finish()
        ))
    }

    #[allow(unsafe_code)]
    fn load_cached(&self, path: &Path) -> Option<Module> {
        if !path.is_file() {
            return None;
        }
        // SAFETY: `deserialize_file` trusts the file to be a module this engine serialized.
        // The cache folder is the operator's, written only by `store_cached` below (atomic
        // rename), and the name carries the content hash and the engine's compatibility hash;
        // wasmtime still checks the version and settings in the header.
        match unsafe { Module::deserialize_file(&self.engine, path) } {
            Ok(module) => Some(module),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unusable cached module");
                None
            }
        }
    }
}

fn store_cached(module: &Module, path: &Path) -> std::io::Result<()> {
    let bytes = module.serialize().map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = path.with_extension(format!("{}.partial", std::process::id()));
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, path)
}
