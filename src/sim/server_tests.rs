//! End-to-end checks of a simulator started in-process, spoken to over raw TCP so the
//! exact wire bytes (chunked framing, aborted bodies) are visible.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::state::Outcome;
use super::{start, Faults, SimConfig, SimServer};

async fn start_sim(faults: Faults) -> SimServer {
    let config = SimConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        faults,
        ..SimConfig::default()
    };
    match start(config).await {
        Ok(server) => server,
        Err(error) => panic!("simulator failed to start: {error}"),
    }
}

fn post(path: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Sends `request` and reads until the server closes the connection.
async fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    // A cut connection may end in a reset; keep what arrived before it.
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn streams_chat_with_usage_and_records_it() {
    let sim = start_sim(Faults::default()).await;
    let body =
        r#"{"messages":[{"role":"user","content":"a b"}],"stream":true,"stream_options":{}}"#;
    let request = post(
        "/v1/chat/completions",
        "X-Request-Id: t-1\r\nx-sim-tokens: 3\r\n",
        body,
    );
    let response = exchange(sim.local_addr(), &request).await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("content-type: text/event-stream; charset=utf-8\r\n"));
    assert!(response.contains("x-request-id: t-1\r\n"));
    assert_eq!(response.matches("\"delta\":{\"content\":\" ").count(), 3);
    assert!(response.contains(
        r#""choices":[],"usage":{"prompt_tokens":5,"total_tokens":8,"completion_tokens":3}"#
    ));
    assert!(response.contains("data: [DONE]\n\n"));
    assert!(
        response.ends_with("0\r\n\r\n"),
        "chunked body must end cleanly"
    );

    let records = sim.state().records();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!((record.seq, record.completion_tokens), (1, 3));
    assert_eq!(record.body_len, body.len());
    assert_eq!(record.body.as_deref(), Some(body));
    assert_eq!(record.x_request_id.as_deref(), Some("t-1"));
    assert_eq!(
        record.headers.get("x-sim-tokens").map(String::as_str),
        Some("3")
    );
    assert!(record.completed && !record.abandoned);
    sim.shutdown().await;
}

#[tokio::test]
async fn cut_after_tokens_aborts_the_chunked_body() {
    let sim = start_sim(Faults {
        cut_after_tokens: Some(2),
        ..Faults::default()
    })
    .await;
    let request = post(
        "/v1/completions",
        "",
        r#"{"prompt":"x","stream":true,"max_tokens":10,"stream_options":{"include_usage":true}}"#,
    );
    let response = exchange(sim.local_addr(), &request).await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"));
    assert_eq!(response.matches("\"text\":\" ").count(), 2);
    assert!(!response.contains("[DONE]"));
    assert!(!response.contains("\"choices\":[]"));
    assert!(!response.ends_with("0\r\n\r\n"), "{response}");
    let record = &sim.state().records()[0];
    assert_eq!(record.outcome, Outcome::Cut);
    assert_eq!(record.completion_tokens, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn client_going_away_is_counted_as_abandoned() {
    let sim = start_sim(Faults::default()).await;
    let request = post(
        "/v1/chat/completions",
        "x-sim-tokens: 200\r\nx-sim-itl-ms: 20\r\n",
        r#"{"messages":[],"stream":true}"#,
    );
    let mut stream = TcpStream::connect(sim.local_addr()).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut first_bytes = [0u8; 512];
    let read = stream.read(&mut first_bytes).await.expect("read");
    assert!(read > 0);
    assert_eq!(sim.state().stats().in_flight, 1);
    drop(stream);

    let deadline = Instant::now() + Duration::from_secs(1);
    while sim.state().stats().abandoned_total == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = sim.state().stats();
    assert_eq!((stats.abandoned_total, stats.in_flight), (1, 0));
    assert!(sim.state().records()[0].completion_tokens < 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn slow_start_delays_binding() {
    let started = Instant::now();
    let sim = start_sim(Faults {
        slow_start_ms: Some(150),
        ..Faults::default()
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    sim.shutdown().await;
}
