//! Fleet scheduling on the realistic simulator (`tokengate-sim --engine batching`): the
//! simulator really queues beyond `--max-num-seqs` and rewards a prefix-cache hit, and the
//! `scored` policy follows a repeated prefix while avoiding a queued replica.
//!
//! Everything here depends on wall-clock durations, so it all lives in `mod timing`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod common;

mod timing {
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};

    use super::common::{client, eventually, serial, Proxy, ProxyConfig, Sim};

    const SERVED: &str = "sched-model";

    /// One gauge or counter of a simulator's `/metrics`, summed over its series.
    async fn metric(sim: &Sim, name: &str) -> f64 {
        let text = client()
            .get(sim.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn chat(model: &str, system: &str, user: &str, max_tokens: u64) -> Value {
        json!({
            "model": model,
            "max_tokens": max_tokens,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
        })
    }

    /// Sends a non-streaming chat; returns how long it took and the replica that answered.
    async fn timed(url: &str, body: &Value) -> (Duration, String) {
        let started = Instant::now();
        let r = client().post(url).json(body).send().await.expect("sent");
        assert_eq!(r.status(), 200, "request failed");
        let replica = r
            .headers()
            .get("x-sim-replica")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let _ = r.bytes().await;
        (started.elapsed(), replica)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_simulator_queues_beyond_max_num_seqs() {
        let _serial = serial().await;
        let sim = Sim::start(&[
            "--served-model-name",
            SERVED,
            "--engine",
            "batching",
            "--max-num-seqs",
            "2",
            "--decode-ms",
            "100",
        ]);
        let url = sim.url("/v1/chat/completions");
        let mut calls = Vec::new();
        for i in 0..5 {
            let url = url.clone();
            let body = chat(SERVED, "short", &format!("user {i}"), 20);
            calls.push(tokio::spawn(async move { timed(&url, &body).await }));
        }
        // 2 run (20 tokens × ≥ 100 ms each), the other 3 wait in the queue.
        let (seen, _) = eventually(Duration::from_secs(5), "3 waiting, 2 running", || async {
            let waiting = metric(&sim, "vllm:num_requests_waiting").await;
            let running = metric(&sim, "vllm:num_requests_running").await;
            (waiting == 3.0 && running == 2.0).then_some((waiting, running))
        })
        .await;
        println!("waiting/running while loaded: {seen:?}");
        for c in calls {
            c.await.expect("call");
        }
        assert_eq!(metric(&sim, "vllm:num_requests_waiting").await, 0.0);
        assert_eq!(metric(&sim, "vllm:num_requests_running").await, 0.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_repeated_prefix_gets_a_faster_first_token() {
        let _serial = serial().await;
        // 2000 prompt tokens/s: an uncached 16 KiB system prompt (~4 K tokens) takes ~2 s.
        let sim = Sim::start(&[
            "--served-model-name",
            SERVED,
            "--engine",
            "batching",
            "--prefill-tokens-per-s",
            "2000",
        ]);
        let url = sim.url("/v1/chat/completions");
        let system = "You are a meticulous assistant. ".repeat(512);
        // max_tokens 1: the whole answer is the first token.
        let (new_prefix, _) = timed(&url, &chat(SERVED, &system, "first user", 1)).await;
        let (repeated, _) = timed(&url, &chat(SERVED, &system, "second user", 1)).await;
        let other = format!("A different deployment. {system}");
        let (other_prefix, _) = timed(&url, &chat(SERVED, &other, "third user", 1)).await;
        println!("first token: new {new_prefix:?}, repeated {repeated:?}, other {other_prefix:?}");
        assert!(new_prefix >= Duration::from_millis(1500), "{new_prefix:?}");
        assert!(
            other_prefix >= Duration::from_millis(1500),
            "{other_prefix:?}"
        );
        assert!(
            repeated * 4 < new_prefix,
            "a cached prefix must be much faster: {repeated:?} vs {new_prefix:?}"
        );
        let hits = metric(&sim, "vllm:prefix_cache_hits_total").await;
        let queries = metric(&sim, "vllm:prefix_cache_queries_total").await;
        assert!(hits > 0.0 && hits < queries, "hits {hits} of {queries}");
        // The second request hit almost all of its prompt: about a third of all tokens.
        assert!(hits / queries > 0.25, "hits {hits} of {queries}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scored_follows_a_repeated_prefix_and_avoids_a_queued_replica() {
        let _serial = serial().await;
        // Small caches so that running requests with long prompts fill the KV cache: a replica
        // queues because its KV cache is full, as vLLM does.
        let args = [
            "--served-model-name",
            SERVED,
            "--engine",
            "batching",
            "--max-num-seqs",
            "1",
            "--cache-blocks",
            "256",
            "--decode-ms",
            "2",
        ];
        let sims = [Sim::start(&args), Sim::start(&args), Sim::start(&args)];
        let addrs: Vec<_> = sims.iter().map(|s| s.addr).collect();
        let proxy = Proxy::start(
            &ProxyConfig::default()
                .cluster("pool", "vllm", &addrs)
                .with(&[
                    "policy = \"scored\"",
                    "scrape = { interval_ms = 100 }",
                    "health = { interval_ms = 200 }",
                ])
                .model("m", "pool", SERVED),
        );
        let url = proxy.url("/v1/chat/completions");
        let system = "SHARED. You are a careful assistant. ".repeat(60);
        let (_, home) = timed(&url, &chat("m", &system, "user 0", 2)).await;
        for i in 1..10 {
            let (_, replica) = timed(&url, &chat("m", &system, &format!("user {i}"), 2)).await;
            assert_eq!(replica, home, "request {i} left the prefix's replica");
        }

        // Queue the prefix's replica directly (not through the proxy): one long request runs
        // with a prompt that fills its KV cache, three wait behind it.
        let queued = sims
            .iter()
            .find(|s| home == s.addr.to_string())
            .expect("home replica");
        let direct = queued.url("/v1/chat/completions");
        let filler = "x".repeat(16 * 1024);
        let mut blockers = Vec::new();
        for i in 0..4 {
            let (direct, body) = (direct.clone(), chat(SERVED, &filler, &format!("b{i}"), 400));
            blockers.push(tokio::spawn(async move { timed(&direct, &body).await }));
        }
        eventually(Duration::from_secs(5), "the replica queueing", || async {
            (metric(queued, "vllm:num_requests_waiting").await >= 3.0).then_some(())
        })
        .await;
        // Three scrape intervals for the proxy to see it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in 10..15 {
            let (_, replica) = timed(&url, &chat("m", &system, &format!("user {i}"), 2)).await;
            assert_ne!(replica, home, "request {i} went to the queued replica");
        }
        for b in blockers {
            b.abort();
        }
    }
}
