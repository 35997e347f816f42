//! The smallest Pingora reverse proxy: one fixed upstream, no routing, no limits, no JWT, no
//! access log. `bench/gateway.sh` runs it beside the gateway so that Pingora's own cost per
//! request and per connection is a line of its own in the table, apart from what the gateway's
//! features add.
//!
//!   cargo build --release -p gateway --example bare_proxy
//!   [THREADS=n] bare_proxy UPSTREAM PLAIN_LISTEN [TLS_LISTEN CERT KEY]
//!
//! Same process settings as the gateway's benchmark configuration: mimalloc, `THREADS` worker
//! threads (default 1), an upstream keep-alive pool of 4 096 connections, rustls with h2 and
//! http/1.1.

use async_trait::async_trait;
use pingora::modules::http::HttpModules;
use pingora::modules::http::compression::ResponseCompressionBuilder;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: String,
    compression: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    fn init_downstream_modules(&self, modules: &mut HttpModules) {
        if self.compression {
            modules.add_module(ResponseCompressionBuilder::enable(0));
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn usage() -> ! {
    eprintln!("usage: [THREADS=n] bare_proxy UPSTREAM PLAIN_LISTEN [TLS_LISTEN CERT KEY]");
    std::process::exit(2)
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (upstream, plain) = match (args.first(), args.get(1)) {
        (Some(u), Some(p)) => (u.clone(), p.clone()),
        _ => usage(),
    };
    let tls = match (args.get(2), args.get(3), args.get(4)) {
        (Some(l), Some(c), Some(k)) => Some((l.clone(), c.clone(), k.clone())),
        (None, _, _) => None,
        _ => usage(),
    };
    let threads = std::env::var("THREADS")
        .map_or(Ok(1), |t| t.parse::<usize>())
        .unwrap_or_else(|_| usage());

    let conf = ServerConf {
        threads,
        upstream_keepalive_pool_size: 4096,
        work_stealing: std::env::var("WORK_STEALING").as_deref() != Ok("0"),
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let compression = std::env::var("COMPRESSION_MODULE").as_deref() != Ok("0");
    let mut proxy = http_proxy_service(
        &server.configuration,
        Bare {
            upstream,
            compression,
        },
    );
    proxy.add_tcp(&plain);
    if let Some((listen, cert, key)) = tls {
        let mut settings = match pingora::listeners::tls::TlsSettings::intermediate(&cert, &key) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("bare_proxy: TLS settings: {e}");
                std::process::exit(1)
            }
        };
        settings.enable_h2();
        proxy.add_tls_with_settings(&listen, None, settings);
    }
    server.add_service(proxy);
    server.run_forever();
}
