//! Streaming responses pass through incrementally: the client holds the first event while the
//! replica is still generating.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // tests fail loudly; scenarios read top to bottom

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;

/// Tests with wall-clock bounds: run alone and one at a time (see tests/common: `serial`).
mod timing {
    use super::*;

    #[tokio::test]
    async fn first_event_arrives_before_the_replica_finishes() {
        let _serial = serial().await;
        let sim = Sim::start(&["--served-model-name", "served", "--itl-ms", "100"]);
        let proxy = Proxy::start(
            &ProxyConfig::default()
                .cluster("pool", "vllm", &[sim.addr])
                .model("m", "pool", "served"),
        );
        let started = Instant::now();
        let response = client()
            .post(proxy.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-sim-tokens", "20")
            .body(r#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"model":"m"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let mut body = response.bytes_stream();
        let mut seen = Vec::new();
        // Read until the first content delta.
        while !String::from_utf8_lossy(&seen).contains("\"content\":\" ") {
            let piece = tokio::time::timeout(Duration::from_secs(5), body.next())
                .await
                .expect("first content event in time")
                .expect("stream open")
                .unwrap();
            seen.extend_from_slice(&piece);
        }
        let first_at = started.elapsed();
        let stats = sim.stats().await;
        assert_eq!(
            stats["completed_total"], 0,
            "the replica is still generating when the client holds event 1"
        );
        assert_eq!(stats["in_flight"], 1);
        while let Some(piece) = body.next().await {
            seen.extend_from_slice(&piece.unwrap());
        }
        let total = started.elapsed();
        let text = String::from_utf8(seen).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert_eq!(text.matches("\"content\":\" ").count(), 20);
        assert!(
            first_at * 4 < total,
            "first event at {first_at:?}, whole stream {total:?}"
        );
    }
}
