//! Step "probes": readiness and liveness checks of a running container (httpGet, tcpSocket,
//! exec) and the success/failure counting that turns results into "ready changed" or "kill".
//! IO: network connections and probe processes in `run_probe`; the counters, the request
//! text and the status-line parsing are pure.

use k8s_openapi::api::core::v1::{Container, ExecAction, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Interval};

/// When the probe runs: first after `initialDelaySeconds`, then every `periodSeconds`.
pub fn ticker(p: Option<&Probe>) -> Option<Interval> {
    p.map(|p| {
        let d = Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
        tokio::time::interval_at(Instant::now() + d, period)
    })
}

/// The next tick; never, without a probe (so a `select!` branch stays idle).
pub async fn tick(t: &mut Option<Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Consecutive readiness results against `successThreshold` / `failureThreshold`.
#[derive(Debug, Default)]
pub struct Readiness {
    successes: i32,
    failures: i32,
    ready: bool,
}

impl Readiness {
    /// Records a result; Some(new readiness) when it changes.
    pub fn observe(&mut self, p: &Probe, ok: bool) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        if !self.ready && self.successes >= p.success_threshold.unwrap_or(1) {
            self.ready = true;
            return Some(true);
        }
        if self.ready && self.failures >= p.failure_threshold.unwrap_or(3) {
            self.ready = false;
            return Some(false);
        }
        None
    }
}

/// Consecutive liveness failures against `failureThreshold`.
#[derive(Debug, Default)]
pub struct Liveness {
    pub failures: i32,
}

impl Liveness {
    /// Records a result; true when the container must be killed.
    pub fn observe(&mut self, p: &Probe, ok: bool) -> bool {
        if ok {
            self.failures = 0;
        } else {
            self.failures += 1;
        }
        self.failures >= p.failure_threshold.unwrap_or(3)
    }
}

/// Runs the probe once; a timeout (`timeoutSeconds`) is a failure.
pub async fn run_probe(p: &Probe, c: &Container, env: &[(String, String)], dir: &Path) -> bool {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    let fut = async {
        if let Some(h) = &p.http_get {
            http_get(h, c).await
        } else if let Some(t) = &p.tcp_socket {
            tcp_connect(t, c).await
        } else if let Some(e) = &p.exec {
            exec(e, env, dir).await
        } else {
            true // grpc probes: not implemented, counted as success
        }
    };
    tokio::time::timeout(timeout, fut).await.unwrap_or(false)
}

fn probe_host(host: &Option<String>) -> String {
    host.clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "127.0.0.1".into())
}

async fn http_get(h: &HTTPGetAction, c: &Container) -> bool {
    let Some(port) = probe_port(&h.port, c) else {
        return false;
    };
    let host = probe_host(&h.host);
    let Ok(mut s) = tokio::net::TcpStream::connect((host.as_str(), port)).await else {
        return false;
    };
    if h.scheme.as_deref() == Some("HTTPS") {
        return true; // TLS not implemented: a TCP connect counts.
    }
    let headers: Vec<(String, String)> = h
        .http_headers
        .iter()
        .flatten()
        .map(|hh| (hh.name.clone(), hh.value.clone()))
        .collect();
    let req = http_request(h.path.as_deref().unwrap_or("/"), &host, port, &headers);
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    // The status code is in the first 12 bytes ("HTTP/1.1 200").
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    (200..400).contains(&status_code(&buf[..n]))
}

fn http_request(path: &str, host: &str, port: u16, headers: &[(String, String)]) -> String {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// The code of an HTTP status line; 0 when there is none.
fn status_code(head: &[u8]) -> u16 {
    let line = String::from_utf8_lossy(head);
    line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

async fn tcp_connect(t: &TCPSocketAction, c: &Container) -> bool {
    let Some(port) = probe_port(&t.port, c) else {
        return false;
    };
    let host = probe_host(&t.host);
    tokio::net::TcpStream::connect((host.as_str(), port)).await.is_ok()
}

/// Runs on the host, in the pod dir, with the container's environment.
async fn exec(e: &ExecAction, env: &[(String, String)], dir: &Path) -> bool {
    let argv = e.command.clone().unwrap_or_default();
    if argv.is_empty() {
        return false;
    }
    tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A numeric port, or the name of one of the container's ports.
fn probe_port(p: &IntOrString, c: &Container) -> Option<u16> {
    match p {
        IntOrString::Int(i) => u16::try_from(*i).ok(),
        IntOrString::String(s) => s.parse().ok().or_else(|| {
            c.ports
                .as_ref()?
                .iter()
                .find(|cp| cp.name.as_deref() == Some(s.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn probe(v: serde_json::Value) -> Probe {
        serde_json::from_value(v).unwrap()
    }

    fn container() -> Container {
        serde_json::from_value(json!({"name": "m", "ports": [{"name": "http", "containerPort": 8080},
            {"name": "big", "containerPort": 70000}]}))
        .unwrap()
    }

    #[test]
    fn ports_by_number_and_name() {
        let c = container();
        assert_eq!(probe_port(&IntOrString::Int(80), &c), Some(80));
        assert_eq!(probe_port(&IntOrString::Int(-1), &c), None);
        assert_eq!(probe_port(&IntOrString::String("9090".into()), &c), Some(9090));
        assert_eq!(probe_port(&IntOrString::String("http".into()), &c), Some(8080));
        assert_eq!(probe_port(&IntOrString::String("big".into()), &c), None);
        assert_eq!(probe_port(&IntOrString::String("nope".into()), &c), None);
    }

    #[test]
    fn readiness_thresholds() {
        let p = probe(json!({"successThreshold": 2, "failureThreshold": 2}));
        let mut r = Readiness::default();
        assert_eq!(r.observe(&p, true), None);
        assert_eq!(r.observe(&p, true), Some(true));
        assert_eq!(r.observe(&p, true), None);
        assert_eq!(r.observe(&p, false), None);
        assert_eq!(r.observe(&p, true), None); // a success resets the failures
        assert_eq!(r.observe(&p, false), None);
        assert_eq!(r.observe(&p, false), Some(false));
        assert_eq!(r.observe(&p, false), None);
        // Defaults: one success makes it ready, three failures unready.
        let d = probe(json!({}));
        let mut r = Readiness::default();
        assert_eq!(r.observe(&d, false), None);
        assert_eq!(r.observe(&d, true), Some(true));
        assert_eq!(r.observe(&d, false), None);
        assert_eq!(r.observe(&d, false), None);
        assert_eq!(r.observe(&d, false), Some(false));
    }

    #[test]
    fn liveness_kills_after_consecutive_failures() {
        let p = probe(json!({"failureThreshold": 2}));
        let mut l = Liveness::default();
        assert!(!l.observe(&p, false));
        assert!(!l.observe(&p, true));
        assert!(!l.observe(&p, false));
        assert!(l.observe(&p, false));
        assert_eq!(l.failures, 2);
        let mut l = Liveness::default();
        let d = probe(json!({}));
        assert!(!l.observe(&d, false) && !l.observe(&d, false) && l.observe(&d, false));
    }

    #[test]
    fn request_and_status_line() {
        let req = http_request("/healthz", "127.0.0.1", 8080, &[("X-A".into(), "1".into())]);
        assert_eq!(
            req,
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\nX-A: 1\r\n\r\n"
        );
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n"), 204);
        assert_eq!(status_code(b"HTTP/1.0 302"), 302);
        assert_eq!(status_code(b"garbage"), 0);
        assert_eq!(status_code(b""), 0);
        assert_eq!(probe_host(&Some(String::new())), "127.0.0.1");
        assert_eq!(probe_host(&Some("localhost".into())), "localhost");
    }

    #[tokio::test]
    async fn probes_against_a_local_server() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let code = if String::from_utf8_lossy(&buf[..n]).starts_with("GET /ok ") {
                    200
                } else {
                    500
                };
                let _ = s.write_all(format!("HTTP/1.1 {code} X\r\n\r\n").as_bytes()).await;
            }
        });
        let c = container();
        let dir = std::env::temp_dir();
        let http = |path: &str| probe(json!({"httpGet": {"path": path, "port": port}}));
        assert!(run_probe(&http("/ok"), &c, &[], &dir).await);
        assert!(!run_probe(&http("/bad"), &c, &[], &dir).await);
        assert!(run_probe(&probe(json!({"tcpSocket": {"port": port}})), &c, &[], &dir).await);
        // Bound but never listening: connections are refused, and no other process can take the
        // port meanwhile (a port freed for the check could be, by a suite running beside).
        let closed = tokio::net::TcpSocket::new_v4().unwrap();
        closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        assert!(!run_probe(&probe(json!({"tcpSocket": {"port": closed_port}})), &c, &[], &dir).await);
        drop(closed);
        let env = [("CODE".to_string(), "3".to_string())];
        let sh = |script: &str| probe(json!({"exec": {"command": ["/bin/sh", "-c", script]}}));
        assert!(run_probe(&sh("exit 0"), &c, &env, &dir).await);
        assert!(!run_probe(&sh("exit $CODE"), &c, &env, &dir).await);
        assert!(!run_probe(&probe(json!({"exec": {}})), &c, &env, &dir).await);
        assert!(run_probe(&probe(json!({"grpc": {"port": 1}})), &c, &env, &dir).await);
    }
}
