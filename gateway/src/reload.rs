//! Swapping the running configuration without touching connections: a reload (SIGHUP or
//! `POST /reload`) reads the files again, compiles them (`compile.rs`) and swaps routes,
//! upstreams, limits, CORS, JWT settings and certificates in one step, or refuses the whole
//! and keeps serving; host-name upstream targets that now resolve elsewhere rebuild only those
//! upstreams.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use gatehouse_common::config::Environment;

use crate::compile::compile;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::tls::Resolver;

/// What the admin listener, the housekeeping task and reloads share.
pub struct Shared {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub resolver: Arc<Resolver>,
    pub metrics: Arc<Metrics>,
    /// The base configuration file (its overlay for `env` is found beside it).
    pub base: PathBuf,
    pub env: Environment,
    /// One reload (or upstream rebuild) at a time.
    pub reloading: tokio::sync::Mutex<()>,
    /// Each client-facing listener's name and whether it is bound yet (`/readyz`).
    pub listeners_bound: Vec<(&'static str, Arc<std::sync::atomic::AtomicBool>)>,
}

impl Shared {
    /// Re-reads the configuration and swaps routes, upstreams, limits, CORS, JWT settings and
    /// certificates in one step. Anything invalid is refused whole and the running
    /// configuration keeps serving; connections are never touched.
    pub async fn reload(&self) -> Result<(), String> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = self.try_reload().await;
        match &result {
            Ok(()) => {
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(config = %self.base.display(), "configuration reloaded");
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["rejected"]).inc();
                tracing::error!(config = %self.base.display(), error = %e, "configuration reload refused; the running configuration keeps serving");
            }
        }
        result
    }

    /// Looks up host-name targets again; when one now stands for other addresses, rebuilds
    /// those upstreams (`Runtime::with_upstreams_resolved_again`) and swaps the runtime.
    pub async fn follow_upstream_names(&self) {
        if !self
            .runtime
            .load()
            .upstreams
            .values()
            .any(|u| u.has_names())
        {
            return;
        }
        let _one_at_a_time = self.reloading.lock().await;
        // Read under the lock: a reload that just finished is not overwritten.
        let current = self.runtime.load_full();
        let looked_up = {
            let current = current.clone();
            tokio::task::spawn_blocking(move || current.with_upstreams_resolved_again()).await
        };
        match looked_up {
            Ok(Ok(Some(next))) => {
                for up in next.upstreams.values() {
                    up.ensure_health_loop();
                }
                let now: Vec<String> = next
                    .upstreams
                    .values()
                    .filter(|u| {
                        !current
                            .upstreams
                            .get(&u.name)
                            .is_some_and(|old| Arc::ptr_eq(old, u))
                    })
                    .map(|u| format!("{}: {:?}", u.name, u.addresses))
                    .collect();
                self.runtime.store(Arc::new(next));
                tracing::info!(upstreams = ?now, "upstream host names resolve to new addresses; upstreams rebuilt");
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "upstream addresses changed but the rebuild failed; keeping the old ones")
            }
            Err(e) => tracing::warn!(error = %e, "looking up upstream names failed"),
        }
    }

    async fn try_reload(&self) -> Result<(), String> {
        let config = crate::settings::load(&self.base, self.env).map_err(|e| e.to_string())?;
        let s = config.settings();
        let current = self.runtime.load_full();
        let (new, old) = (&s.server, &current.settings.server);
        if s.listen != current.settings.listen
            || new.threads != old.threads
            || new.max_connections != old.max_connections
            || new.max_connections_per_client != old.max_connections_per_client
            || new.header_timeout_seconds != old.header_timeout_seconds
            || new.keepalive_timeout_seconds != old.keepalive_timeout_seconds
            || new.read_buffer_bytes != old.read_buffer_bytes
        {
            tracing::warn!(
                "listener addresses, threads and connection limits (server.max_connections*, header_timeout_seconds, keepalive_timeout_seconds, read_buffer_bytes) change only on restart or binary upgrade"
            );
        }
        let next = compile(&config, Some(&current), &self.metrics).map_err(|e| e.to_string())?;
        if !Arc::ptr_eq(&next.runtime.jwks, &current.jwks) {
            next.runtime
                .jwks
                .refresh()
                .await
                .map_err(|e| format!("jwt: the new settings cannot load keys: {e}"))?;
        }
        for up in next.runtime.upstreams.values() {
            up.ensure_health_loop();
        }
        self.resolver.replace(next.certs);
        self.runtime.store(Arc::new(next.runtime));
        Ok(())
    }
}
