//! Timers: a background thread (with its own small runtime) calls `proxy_on_tick` on every VM
//! whose root context set a tick period, and runs the callouts a tick dispatches, delivering
//! their answers to the root context. It also publishes idle VMs' pending call metrics. A fault in a tick discards the VM like any other fault.
//! [`Ticker::stop`] (or dropping the [`Ticker`]) stops the thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::callout::Callouts;
use super::host::RunningPlugin;
use super::state::CalloutRequest;
use super::vm::ROOT_CONTEXT_ID;

/// The shortest nap between looks for due VMs (the resolution of tick periods).
const RESOLUTION: Duration = Duration::from_millis(5);

#[derive(Debug)]
pub struct Ticker {
    running: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Ticker {
    pub fn start(
        plugins: Vec<Arc<RunningPlugin>>,
        callouts: Arc<Callouts>,
    ) -> std::io::Result<Self> {
        let running = Arc::new(AtomicBool::new(true));
        if plugins.is_empty() {
            return Ok(Self {
                running,
                thread: Mutex::new(None),
            });
        }
        let flag = running.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("plugin-ticks".into())
            .spawn(move || runtime.block_on(run(plugins, callouts, flag)))?;
        Ok(Self {
            running,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops delivering ticks and waits for the thread (at most one flush period). Called by a
    /// reload on the generation it replaces, so no request thread ever waits for it.
    pub fn stop(&self) {
        self.running.store(false, Ordering::Relaxed);
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

async fn run(plugins: Vec<Arc<RunningPlugin>>, callouts: Arc<Callouts>, running: Arc<AtomicBool>) {
    let mut due: HashMap<(usize, usize), Instant> = HashMap::new();
    let mut flushed = Instant::now();
    while running.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now.duration_since(flushed) >= super::vm::FLUSH_AFTER {
            plugins.iter().for_each(|p| p.flush_metrics());
            flushed = now;
        }
        // Sleep until the next tick due, at most until the next metrics flush (so a period a
        // plugin sets later is picked up within FLUSH_AFTER): no wake-ups for plugins without
        // ticks.
        let mut wake = flushed + super::vm::FLUSH_AFTER;
        for (p, plugin) in plugins.iter().enumerate() {
            for slot in 0..plugin.slot_count() {
                let Some(period) = plugin.tick_period(slot) else {
                    due.remove(&(p, slot));
                    continue;
                };
                let next = due.entry((p, slot)).or_insert(now + period);
                if now >= *next {
                    *next = now + period;
                    tick(plugin, slot, &callouts);
                }
                wake = wake.min(*next);
            }
        }
        let nap = wake.saturating_duration_since(Instant::now());
        tokio::time::sleep(nap.clamp(RESOLUTION, super::vm::FLUSH_AFTER)).await;
    }
}

fn tick(plugin: &Arc<RunningPlugin>, slot: usize, callouts: &Arc<Callouts>) {
    let Ok(mut guard) = plugin.lock(slot) else {
        return;
    };
    let generation = guard.generation;
    let Some(vm) = guard.vm() else { return };
    match vm.on_tick() {
        Ok(()) => {
            let dispatched = std::mem::take(&mut vm.state_mut().callouts);
            if dispatched.is_empty() {
                return;
            }
            let (plugin, callouts) = (plugin.clone(), callouts.clone());
            tokio::spawn(async move {
                // The answers may dispatch more callouts: those run too, for the root context.
                let mut pending = dispatched;
                while !pending.is_empty() {
                    for (token, answer) in callouts.run_all(std::mem::take(&mut pending)).await {
                        pending.extend(deliver(&plugin, slot, generation, token, answer));
                    }
                }
            });
        }
        Err(fault) => {
            guard.discard();
            tracing::warn!(plugin = %plugin.name(), %fault, "plugin failed in on_tick");
        }
    }
}

/// A tick's callout answer, to the root context of the VM that asked (if it still lives);
/// returns the callouts that answer dispatched (taken from the VM, so none is left for a
/// request's callback to pick up).
fn deliver(
    plugin: &RunningPlugin,
    slot: usize,
    generation: u64,
    token: u32,
    answer: super::callout::CalloutAnswer,
) -> Vec<CalloutRequest> {
    let Ok(mut guard) = plugin.lock(slot) else {
        return Vec::new();
    };
    if guard.generation != generation {
        return Vec::new();
    }
    let Some(vm) = guard.vm() else {
        return Vec::new();
    };
    let result = vm.on_http_call_answer(ROOT_CONTEXT_ID, token, answer);
    let more = std::mem::take(&mut vm.state_mut().callouts);
    if let Err(fault) = result {
        guard.discard();
        tracing::warn!(plugin = %plugin.name(), %fault, "plugin failed in a tick's callout response");
        return Vec::new();
    }
    more
}
