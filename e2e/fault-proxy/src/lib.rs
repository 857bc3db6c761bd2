//! A fault-injecting proxy for the real-environment tests: it sits between a client (the
//! worker, the operator) and a real server (s3s-fs, Milvus) and, by [`rules`], answers some
//! requests with errors, resets or cuts connections, or delays them. HTTP mode understands one
//! request at a time (S3); TCP mode works per connection (gRPC).

pub mod http;
pub mod rules;
pub mod tcp;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

pub use rules::{Fault, Rule, RuleCount, RuleError, Rules};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Http,
    Tcp,
}

/// What the proxy has seen and done, for a test or a report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Requests (HTTP) or connections (TCP) seen.
    pub requests: u64,
    /// Faults injected, all rules together.
    pub faults: u64,
    pub rules: Vec<RuleCount>,
}

pub(crate) struct Shared {
    pub upstream: SocketAddr,
    pub rules: Mutex<Rules>,
    connections: Mutex<Vec<AbortHandle>>,
    seed: u64,
}

impl Shared {
    pub(crate) fn decide(&self, method: &str, target: &str) -> Option<Fault> {
        self.rules.lock().unwrap().decide(method, target)
    }
}

/// A running proxy; it stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    mode: Mode,
    shared: Arc<Shared>,
    accept: Mutex<Option<AbortHandle>>,
}

fn accept_loop(listener: TcpListener, mode: Mode, s: Arc<Shared>) -> AbortHandle {
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let _ = conn.set_nodelay(true);
            let handle = match mode {
                Mode::Http => tokio::spawn(http::serve(conn, s.clone())),
                Mode::Tcp => tokio::spawn(tcp::serve(conn, s.clone())),
            };
            let mut open = s.connections.lock().unwrap();
            open.retain(|h| !h.is_finished());
            open.push(handle.abort_handle());
        }
    })
    .abort_handle()
}

impl Proxy {
    /// Listens on `listen` (e.g. `127.0.0.1:0`) and forwards to `upstream`.
    pub async fn start(
        listen: &str,
        upstream: SocketAddr,
        mode: Mode,
        rules: Vec<Rule>,
        seed: u64,
    ) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            rules: Mutex::new(Rules::new(rules, seed)),
            connections: Mutex::new(Vec::new()),
            seed,
        });
        let accept = Mutex::new(Some(accept_loop(listener, mode, shared.clone())));
        Ok(Proxy {
            addr,
            mode,
            shared,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the rules (their counts start again from zero).
    pub fn set_rules(&self, rules: Vec<Rule>) {
        let mut r = self.shared.rules.lock().unwrap();
        *r = Rules::new(rules, self.shared.seed);
    }

    /// Closes every open connection, as a server restart does.
    pub fn sever(&self) {
        for h in self.shared.connections.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// Stops listening and closes every connection: new connections are refused by the
    /// system (ECONNREFUSED), as while a server is down.
    pub fn down(&self) {
        if let Some(h) = self.accept.lock().unwrap().take() {
            h.abort();
        }
        self.sever();
    }

    /// Listens again on the same address after [`Proxy::down`], as a restarted server does.
    pub async fn up(&self) -> std::io::Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        *self.accept.lock().unwrap() = Some(accept_loop(listener, self.mode, self.shared.clone()));
        Ok(())
    }

    pub fn stats(&self) -> Stats {
        let r = self.shared.rules.lock().unwrap();
        Stats {
            requests: r.requests,
            faults: r.fired(),
            rules: r.counts(),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
    }
}

/// Closes a connection with a reset (SO_LINGER 0) rather than an orderly FIN.
pub(crate) fn reset(conn: tokio::net::TcpStream) {
    let _ = conn.set_zero_linger();
    drop(conn);
}
