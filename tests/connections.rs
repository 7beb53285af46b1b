//! Client connections (issue #13): the caps on concurrent connections (total and per IP), the
//! request-header deadline, JSON answers where Pingora would send an empty `400`, and idle
//! sockets that can no longer starve the proxy's own probes of descriptors. Real `tokengate`
//! and `tokengate-sim` over TCP.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // tests fail loudly; scenarios read top to bottom

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

const SERVED: &str = "sim-model";

/// Read what the server sends until it closes or `wait` passes; `true` if it closed.
fn read_until_close(s: &mut TcpStream, wait: Duration) -> (String, bool) {
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn idle_sockets(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect()
}

async fn chat_ok(proxy: &Proxy) -> bool {
    let (status, _, _) = post(
        &proxy.url("/v1/chat/completions"),
        br#"{"model":"m","messages":[]}"#.to_vec(),
    )
    .await;
    status == 200
}

#[tokio::test]
async fn connections_over_the_total_cap_get_a_json_503_and_the_place_is_freed_on_close() {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(&one_replica(&sim, SERVED).server("max_client_connections = 8"));
    let held = idle_sockets(proxy.addr, 8);
    assert_eventually(Duration::from_secs(5), "8 connections counted", || async {
        metric_sum(&proxy, "tokengate_client_connections", &[]).await == 8.0
    })
    .await;
    let mut ninth = TcpStream::connect(proxy.addr).expect("connect");
    let (reply, closed) = read_until_close(&mut ninth, Duration::from_secs(5));
    assert_eq!(status_of(&reply), 503, "{reply}");
    assert!(closed, "a refused connection is closed");
    assert_eq!(json_body(&reply)["error"]["code"], "connection_limit");
    assert!(
        reply.to_ascii_lowercase().contains("retry-after: 1"),
        "{reply}"
    );
    let refused = metric_sum(
        &proxy,
        "tokengate_client_connections_refused_total",
        &[("reason", "total")],
    )
    .await;
    assert_eq!(refused, 1.0);
    drop(held);
    // The closes reach the proxy asynchronously; a request before they do would itself be
    // refused (and reqwest reports a response before its request as an error).
    assert_eventually(
        Duration::from_secs(5),
        "the held connections closed",
        || async { metric_sum(&proxy, "tokengate_client_connections", &[]).await == 0.0 },
    )
    .await;
    assert!(chat_ok(&proxy).await, "a request after the close");
}

#[tokio::test]
async fn the_per_ip_cap_holds_for_one_address() {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(
        &one_replica(&sim, SERVED)
            .server("max_client_connections = 100")
            .server("max_client_connections_per_ip = 3"),
    );
    let held = idle_sockets(proxy.addr, 3);
    assert_eventually(Duration::from_secs(5), "3 connections counted", || async {
        metric_sum(&proxy, "tokengate_client_connections", &[]).await == 3.0
    })
    .await;
    let mut fourth = TcpStream::connect(proxy.addr).expect("connect");
    let (reply, _) = read_until_close(&mut fourth, Duration::from_secs(5));
    assert_eq!(status_of(&reply), 503, "{reply}");
    let per_ip = metric_sum(
        &proxy,
        "tokengate_client_connections_refused_total",
        &[("reason", "per_ip")],
    )
    .await;
    assert_eq!(per_ip, 1.0);
    drop(held);
    // The closes reach the proxy asynchronously; a request before they do would itself be
    // refused (and reqwest reports a response before its request as an error).
    assert_eventually(
        Duration::from_secs(5),
        "the held connections closed",
        || async { metric_sum(&proxy, "tokengate_client_connections", &[]).await == 0.0 },
    )
    .await;
    assert!(chat_ok(&proxy).await, "a request after the close");
}

#[tokio::test]
async fn a_per_ip_cap_above_the_total_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    let sim_addr = dead_addr();
    let config = ProxyConfig::default()
        .cluster("pool", "vllm", &[sim_addr])
        .model("m", "pool", SERVED)
        .server("max_client_connections = 10")
        .server("max_client_connections_per_ip = 11");
    std::fs::write(&path, config.render(dir.path())).expect("write");
    let out = std::process::Command::new(PROXY_BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("server.max_client_connections_per_ip"),
        "{stderr}"
    );
}

#[tokio::test]
async fn requests_pingora_cannot_parse_get_a_json_400() {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(&one_replica(&sim, SERVED));
    let malformed: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"\x01\x02\x03 / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
    ];
    for request in malformed {
        let mut s = TcpStream::connect(proxy.addr).expect("connect");
        s.write_all(request).expect("write");
        let (reply, closed) = read_until_close(&mut s, Duration::from_secs(5));
        assert_eq!(status_of(&reply), 400, "{request:?} → {reply}");
        assert_eq!(
            json_body(&reply)["error"]["code"],
            "malformed_request",
            "{reply}"
        );
        assert!(closed, "closed after a malformed request");
    }
    // A well-formed request on the same listener is unaffected.
    assert!(chat_ok(&proxy).await);
}

mod timing {
    use super::*;

    /// Sends `bytes` one at a time, `gap` apart, until the server answers or closes.
    fn dribble(s: &mut TcpStream, bytes: &[u8], gap: Duration, limit: Duration) -> (String, bool) {
        s.set_read_timeout(Some(gap)).expect("timeout");
        let started = Instant::now();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        for b in bytes.iter().cycle() {
            if started.elapsed() > limit {
                return (String::from_utf8_lossy(&out).into_owned(), false);
            }
            if s.write_all(&[*b]).is_err() {
                break;
            }
            match s.read(&mut buf) {
                Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), true),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(_) => {}
            }
        }
        let (rest, closed) = read_until_close(s, Duration::from_secs(2));
        out.extend_from_slice(rest.as_bytes());
        (String::from_utf8_lossy(&out).into_owned(), closed)
    }

    #[tokio::test]
    async fn a_header_sent_one_byte_at_a_time_is_cut_at_its_deadline_with_a_json_408() {
        let _serial = serial().await;
        let sim = Sim::start(&["--served-model-name", SERVED]);
        // With h2c on (the default, explicit here), a slow HTTP/1 header is still cut by the
        // deadline: the HTTP/2 preface peek gives up at its first non-preface byte.
        let proxy = Proxy::start(
            &one_replica(&sim, SERVED)
                .server("client_header_timeout_ms = 3000")
                .server("h2c = true"),
        );
        let mut s = TcpStream::connect(proxy.addr).expect("connect");
        let started = Instant::now();
        let header = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let (reply, closed) = dribble(
            &mut s,
            header,
            Duration::from_millis(250),
            Duration::from_secs(15),
        );
        let elapsed = started.elapsed();
        println!("header at 4 bytes/s answered after {elapsed:?}: {reply}");
        assert_eq!(status_of(&reply), 408, "{reply}");
        assert_eq!(json_body(&reply)["error"]["code"], "header_timeout");
        assert!(closed, "closed after the 408");
        assert!(
            elapsed >= Duration::from_secs(2) && elapsed <= Duration::from_secs(5),
            "cut after {elapsed:?}, deadline 3 s"
        );
        let timeouts = metric_sum(&proxy, "tokengate_client_header_timeouts_total", &[]).await;
        assert_eq!(timeouts, 1.0);
    }

    /// A whole HTTP/1.1 response: chunked up to its last chunk, or its `content-length`.
    fn response_complete(raw: &[u8]) -> bool {
        let text = String::from_utf8_lossy(raw).to_ascii_lowercase();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        if head.contains("transfer-encoding: chunked") {
            return body.ends_with("0\r\n\r\n");
        }
        head.lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .is_some_and(|n| body.len() >= n)
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_at_the_header_deadline_and_keep_alive_reuse_works() {
        let _serial = serial().await;
        let sim = Sim::start(&["--served-model-name", SERVED]);
        let proxy =
            Proxy::start(&one_replica(&sim, SERVED).server("client_header_timeout_ms = 2000"));
        let mut idle = TcpStream::connect(proxy.addr).expect("connect");
        let started = Instant::now();
        let (reply, closed) = read_until_close(&mut idle, Duration::from_secs(10));
        let elapsed = started.elapsed();
        assert!(closed && reply.is_empty(), "closed quietly: {reply:?}");
        assert!(
            elapsed >= Duration::from_millis(1500) && elapsed <= Duration::from_secs(4),
            "closed after {elapsed:?}, deadline 2 s"
        );
        // A kept-alive connection: two requests 2.5 s apart (longer than the header deadline,
        // which only runs while a header is arriving) both answered on one connection.
        let mut s = TcpStream::connect(proxy.addr).expect("connect");
        let body = r#"{"model":"m","messages":[]}"#;
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        for round in 0..2 {
            if round == 1 {
                tokio::time::sleep(Duration::from_millis(2500)).await;
            }
            s.write_all(request.as_bytes()).expect("write");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            // The whole response (a rewritten body comes chunked, in several writes) before
            // the next request.
            let mut seen = Vec::new();
            let mut buf = [0u8; 8192];
            while !response_complete(&seen) {
                let n = s.read(&mut buf).expect("answer");
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
                seen.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&seen);
            assert_eq!(status_of(&text), 200, "round {round}: {text}");
        }
    }

    #[tokio::test]
    async fn idle_sockets_up_to_the_cap_never_mark_a_replica_unhealthy() {
        let _serial = serial().await;
        let sim = Sim::start(&["--served-model-name", SERVED]);
        // 300 descriptors: the derived cap is (300 - 128) / 2 = 86 client connections.
        let config = one_replica(&sim, SERVED)
            .with(&["health = { interval_ms = 200 }"])
            .server("client_header_timeout_ms = 4000");
        let proxy = Proxy::start_under(&config, &["prlimit", "--nofile=300:300", "--"]);
        let held = idle_sockets(proxy.addr, 250);
        assert_eventually(Duration::from_secs(5), "the cap reached", || async {
            metric_sum(&proxy, "tokengate_client_connections", &[]).await == 86.0
        })
        .await;
        assert_eventually(Duration::from_secs(5), "the other 164 refused", || async {
            metric_sum(&proxy, "tokengate_client_connections_refused_total", &[]).await == 164.0
        })
        .await;
        // Ten probe intervals while every client place is taken.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let healthy = metric_sum(&proxy, "tokengate_replica_healthy", &[]).await;
        assert_eq!(healthy, 1.0, "the replica stayed healthy");
        drop(held);
        assert_eventually(Duration::from_secs(5), "served at once after", || {
            chat_ok(&proxy)
        })
        .await;
    }
}
