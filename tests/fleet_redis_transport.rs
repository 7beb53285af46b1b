//! Fleet mode over the Redis transports beyond a plain standalone server, with real servers
//! over real TCP: a TLS-only `redis-server` (`rediss://`, the test's own CA in `ca_file`), one
//! that also requires a client certificate (`client_cert_file`), and a three-node Redis
//! Cluster (`redis_cluster = true`). Keys created on one instance serve on the other within
//! 1 s, a shared requests-per-minute limit holds across both instances on the cluster, no
//! script hits CROSSSLOT, and a refused handshake stops the start with the reason.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // tests fail loudly; scenarios read top to bottom

mod common;

use std::time::{Duration, Instant};

use common::fleet::*;
use common::*;
use reqwest::Method;
use serde_json::json;

const SEC: Duration = Duration::from_secs(1);

async fn metric(node: &Proxy, name: &str) -> f64 {
    metric_sum(node, name, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_shares_keys_and_an_untrusted_certificate_stops_the_start() {
    let certs_dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::make(certs_dir.path());
    let redis = Redis::start_tls(&tls);
    assert!(redis.url().starts_with("rediss://"));
    let fleet = Fleet::on(redis, 2, &[]);
    fleet.wait_members(2.0).await;
    let c = client();
    let [a, b] = [&fleet.nodes[0], &fleet.nodes[1]];
    for node in [a, b] {
        assert_eq!(metric(node, "tokengate_fleet_redis_up").await, 1.0);
    }

    let secret = create_key(a, json!({"name": "acme"})).await;
    let on_b = until_status(&c, b, &secret, 200, SEC).await;
    eprintln!("rediss://: key created on A serves on B after {on_b:?}");
    let resp = b
        .admin_request(Method::PATCH, "/admin/keys/acme")
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    until_status(&c, a, &secret, 401, SEC).await;

    // The wrong CA: `check` cannot know (it does not connect), the start refuses with the
    // reason; so does a TLS server with no ca_file (the system roots do not know the test CA).
    let url = fleet.redis.url();
    let wrong = format!(
        "redis_url = \"{url}\"\nca_file = \"{}\"",
        tls.other_ca.display()
    );
    let config = fleet_config(&[fleet.sim.addr], &wrong, &fleet.keys, "wrong-ca", &[]);
    let (ok, said) = check(&config);
    assert!(ok, "{said}");
    let err = start_refused(&config);
    eprintln!("wrong CA at start: {}", err.trim());
    assert!(err.contains("fleet"), "{err}");
    assert!(err.contains("certificate is not trusted"), "{err}");
    assert!(err.contains(&tls.other_ca.display().to_string()), "{err}");
    let no_ca = format!("redis_url = \"{url}\"");
    let err = start_refused(&fleet_config(
        &[fleet.sim.addr],
        &no_ca,
        &fleet.keys,
        "no-ca",
        &[],
    ));
    assert!(err.contains("set fleet.ca_file"), "{err}");

    // What check can tell: a CA file that holds no certificate, a CA file without TLS.
    let garbage = certs_dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    for (lines, says) in [
        (
            format!("redis_url = \"{url}\"\nca_file = \"{}\"", garbage.display()),
            "holds no PEM `CERTIFICATE` block",
        ),
        (
            format!(
                "redis_url = \"redis://127.0.0.1:{}\"\nca_file = \"{}\"",
                fleet.redis.port,
                tls.ca.display()
            ),
            "use a `rediss://` redis_url",
        ),
    ] {
        let (ok, said) = check(&fleet_config(
            &[fleet.sim.addr],
            &lines,
            &fleet.keys,
            "x",
            &[],
        ));
        assert!(!ok, "check passed: {lines}");
        assert!(
            said.contains("fleet.ca_file") && said.contains(says),
            "{said}"
        );
    }

    // The instances never noticed any of it.
    let other = create_key(b, json!({"name": "beta"})).await;
    until_status(&c, a, &other, 200, SEC).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_client_certificate_and_a_clear_refusal_without_one() {
    let certs_dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::make(certs_dir.path());
    let fleet = Fleet::on(Redis::start_mutual_tls(&tls), 2, &[]);
    fleet.wait_members(2.0).await;
    let c = client();
    let secret = create_key(&fleet.nodes[0], json!({"name": "acme"})).await;
    until_status(&c, &fleet.nodes[1], &secret, 200, SEC).await;
    for node in &fleet.nodes {
        assert_eq!(metric(node, "tokengate_fleet_redis_up").await, 1.0);
    }

    // No client certificate: Redis (tls-auth-clients yes) ends the handshake; the start
    // says what to set.
    let lines = format!(
        "redis_url = \"{}\"\nca_file = \"{}\"",
        fleet.redis.url(),
        tls.ca.display()
    );
    let config = fleet_config(&[fleet.sim.addr], &lines, &fleet.keys, "no-cert", &[]);
    let err = start_refused(&config);
    eprintln!("no client certificate at start: {}", err.trim());
    assert!(err.contains("client_cert_file"), "{err}");

    // A key that is not the certificate's: check refuses it.
    let wrong = format!(
        "{lines}\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
        tls.client_cert.display(),
        tls.server_key.display()
    );
    let (ok, said) = check(&fleet_config(
        &[fleet.sim.addr],
        &wrong,
        &fleet.keys,
        "x",
        &[],
    ));
    assert!(!ok && said.contains("fleet.client_key_file"), "{said}");
}

/// Errors a node counted by type (INFO errorstats), e.g. `CROSSSLOT`, `MOVED`.
fn error_stats(redis: &Redis) -> String {
    match redis.try_cmd(&["INFO", "errorstats"]) {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(&b).to_string(),
        Some(redis::Value::VerbatimString { text, .. }) => text,
        other => panic!("INFO errorstats: {other:?}"),
    }
}

fn keys_held(redis: &Redis) -> i64 {
    match redis.try_cmd(&["DBSIZE"]) {
        Some(redis::Value::Int(n)) => n,
        other => panic!("DBSIZE: {other:?}"),
    }
}

/// The cluster test hammers a rate limit: the serial timing group.
mod timing {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_redis_cluster_shares_keys_and_limits_without_crossslot() {
        let _serial = serial().await;
        let mut fleet = Fleet::on(RedisCluster::start(), 2, &[]);
        fleet.wait_members(2.0).await;
        let c = client();
        let [a, b] = [&fleet.nodes[0], &fleet.nodes[1]];

        // A key created on A serves on B within 1 s; disabled on B, refused on A within 1 s.
        let secret = create_key(a, json!({"name": "acme"})).await;
        let on_b = until_status(&c, b, &secret, 200, SEC).await;
        eprintln!("cluster: key created on A serves on B after {on_b:?}");
        let resp = b
            .admin_request(Method::PATCH, "/admin/keys/acme")
            .json(&json!({"enabled": false}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let off_a = until_status(&c, a, &secret, 401, SEC).await;
        eprintln!("cluster: key disabled on B refused on A after {off_a:?}");

        // requests_per_minute = 30 hammered through both. README bound over the run t:
        // admitted ≤ C + r·t + N·(L + B), L = B = ceil(0.05 · 30 / 2) = 1.
        let rpm = create_key(
            b,
            json!({"name": "rpm", "limits": {"requests_per_minute": 30}}),
        )
        .await;
        until_status(&c, a, &rpm, 200, SEC).await;
        let start = Instant::now();
        let h = hammer(
            &fleet.nodes,
            &rpm,
            &[2, 2],
            Duration::from_secs(8),
            Duration::from_millis(20),
            false,
        )
        .await;
        let t = start.elapsed().as_secs_f64() + 0.5; // + the probe's admission before
        let admitted = h.admitted.len() as f64 + 1.0;
        let bound = 30.0 + 0.5 * t + 2.0 * (1.0 + 1.0);
        eprintln!(
            "cluster: rpm=30 x 2 instances for {t:.1} s: admitted {admitted} (bound {bound:.1}); \
             statuses {:?}",
            h.statuses
        );
        assert!(admitted <= bound, "over the bound: {admitted} > {bound}");
        assert!(admitted >= 28.0, "starved: {admitted}");
        assert_eq!(h.statuses.keys().copied().collect::<Vec<_>>(), [200, 429]);

        // The fleet view (a same-slot MGET), fleet usage (a pipeline) and a fleet reload work.
        let view = get_json(a.admin_request(Method::GET, "/admin/fleet")).await;
        assert_eq!(view["instances"].as_array().unwrap().len(), 2, "{view}");
        assert_eq!(view["this"]["redis"], "up", "{view}");
        let (usage, _) = eventually(Duration::from_secs(5), "fleet usage summed", || async {
            let u = get_json(a.admin_request(Method::GET, "/admin/usage?scope=fleet")).await;
            u["keys"]["rpm"]["requests"].as_i64().filter(|n| *n >= 29)
        })
        .await;
        eprintln!("cluster: fleet usage for rpm: {usage} requests");
        let reply = get_json(a.admin_request(Method::POST, "/admin/reload?scope=fleet")).await;
        assert_eq!(reply["answered"], 2, "{reply}");

        // Lease exchanges succeeded (one may time out on a loaded machine: the exchange's
        // deadline is short by design; a slot error would fail every one of them), nothing hit
        // CROSSSLOT, and the data is spread over the cluster (so commands really followed the
        // slot map).
        for node in [a, b] {
            assert_eq!(metric(node, "tokengate_fleet_redis_up").await, 1.0);
            let name = "tokengate_fleet_lease_calls_total";
            let ok = metric_sum(node, name, &[("result", "ok")]).await;
            let failed = metric_sum(node, name, &[("result", "failed")]).await;
            assert!(
                ok >= 5.0 && failed <= (ok / 20.0).max(1.0),
                "lease exchanges on {}: {ok} ok, {failed} failed",
                node.addr
            );
        }
        for n in &fleet.redis.nodes {
            let stats = error_stats(n);
            assert!(!stats.contains("CROSSSLOT"), "{}: {stats}", n.port);
        }
        let holding = fleet
            .redis
            .nodes
            .iter()
            .filter(|n| keys_held(n) > 0)
            .count();
        assert!(holding >= 2, "the fleet's keys sit on {holding} node(s)");

        // A node killed (no replica: the cluster fails): requests keep flowing on the local
        // share, the instances say so; the node back, leasing resumes, keys still serve.
        let beta = create_key(a, json!({"name": "beta"})).await;
        until_status(&c, b, &beta, 200, SEC).await;
        fleet.redis.nodes[2].kill();
        let outage = Instant::now();
        let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
        let mut i = 0;
        while outage.elapsed() < Duration::from_secs(4) {
            let node = &fleet.nodes[i % 2];
            *statuses
                .entry(chat_status(&c, node, &rpm).await)
                .or_default() += 1;
            *statuses
                .entry(chat_status(&c, node, &beta).await)
                .or_default() += 1;
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("cluster: one node killed, 4 s of requests: statuses {statuses:?}");
        assert!(
            statuses.keys().all(|s| [200, 429].contains(s)),
            "{statuses:?}"
        );
        for node in &fleet.nodes {
            assert_eventually(Duration::from_secs(5), "redis_up 0", || async {
                metric(node, "tokengate_fleet_redis_up").await == 0.0
            })
            .await;
        }
        fleet.redis.nodes[2].restart();
        fleet.redis.wait_ok(Duration::from_secs(20));
        for node in &fleet.nodes {
            let took = assert_eventually(Duration::from_secs(10), "redis_up 1", || async {
                metric(node, "tokengate_fleet_redis_up").await == 1.0
            })
            .await;
            eprintln!(
                "cluster: node back, {} leasing again after {took:?}",
                node.addr
            );
            assert_eq!(chat_status(&c, node, &beta).await, 200);
        }
    }
}
