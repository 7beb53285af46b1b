//! Unit tests of config loading and validation.

use super::*;

const GOOD: &str = r#"
[server]
listen = ["127.0.0.1:8080"]

[[clusters]]
name = "a"
flavour = "vllm"
replicas = ["127.0.0.1:8101", "127.0.0.1:8102"]

[[models]]
alias = "m"
cluster = "a"
served_name = "org/model"
"#;

fn p(text: &str) -> Result<Config, ConfigError> {
    parse(text, Path::new("t.toml"))
}

#[test]
fn port_zero_listeners_never_clash_but_fixed_ports_do() {
    let zero = "listen = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"";
    let c = p(&GOOD.replace("listen = [\"127.0.0.1:8080\"]", zero)).unwrap();
    assert_eq!(c.server.admin_listen.port(), 0);
    let same = "listen = [\"127.0.0.1:8080\"]\nadmin_listen = \"127.0.0.1:8080\"";
    let e = p(&GOOD.replace("listen = [\"127.0.0.1:8080\"]", same)).unwrap_err();
    assert!(e.to_string().contains("server.admin_listen"), "{e}");
}

#[test]
fn parses_a_valid_config_with_defaults() {
    let c = p(GOOD).unwrap();
    assert_eq!(c.server.max_request_body_bytes, 16 * 1024 * 1024);
    assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9090");
    let r = c.route("m").unwrap();
    assert_eq!(r.served_name, "org/model");
    assert_eq!(r.cluster.replicas.len(), 2);
    assert_eq!(r.cluster.flavour, Flavour::Vllm);
}

#[test]
fn unknown_field_names_line_and_field() {
    let text = GOOD.replace("flavour = \"vllm\"", "flavour = \"vllm\"\nflavor = \"x\"");
    let e = p(&text).unwrap_err();
    assert_eq!(e.issues.len(), 1);
    let msg = e.to_string();
    assert!(msg.contains("t.toml:8:1"), "{msg}");
    assert!(msg.contains("flavor"), "{msg}");
}

#[test]
fn every_semantic_error_is_listed_with_location() {
    let text = r#"
[server]
listen = ["nonsense"]
upstream_idle_timeout_ms = 6000

[[clusters]]
name = "a"
flavour = "sglang"
replicas = []

[[models]]
alias = "m"
cluster = "missing"
"#;
    let e = p(text).unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.issues.len(), 4, "{msg}");
    assert!(msg.contains("t.toml:3:11: server.listen[0]"), "{msg}");
    assert!(msg.contains("server.upstream_idle_timeout_ms"), "{msg}");
    assert!(
        msg.contains("t.toml:8:11: clusters[0].flavour: unknown flavour `sglang`"),
        "{msg}"
    );
    assert!(
        msg.contains("t.toml:13:11: models[0].cluster: unknown cluster `missing`"),
        "{msg}"
    );
}

#[test]
fn duplicates_are_rejected() {
    let text = format!("{GOOD}\n[[models]]\nalias = \"m\"\ncluster = \"a\"\n");
    let e = p(&text).unwrap_err();
    assert!(e.to_string().contains("duplicate model alias `m`"));
}

#[test]
fn tls_settings_go_together() {
    let with = |server: &str| GOOD.replace("[server]\n", &format!("[server]\n{server}\n"));
    let e = p(&with("tls_listen = [\"127.0.0.1:8443\"]")).unwrap_err();
    assert!(e
        .to_string()
        .contains("t.toml:3:15: server.tls_listen: TLS listeners need"));
    let e = p(&with("tls_cert = \"c.pem\"\ntls_key = \"k.pem\"")).unwrap_err();
    assert!(e.to_string().contains("`tls_listen` is empty"), "{e}");
    let e = p(&with(
        "tls_listen = [\"127.0.0.1:8443\"]\ntls_cert = \"no/such.pem\"\ntls_key = \"no/k.pem\"",
    ))
    .unwrap_err();
    assert_eq!(e.issues.len(), 2, "{e}");
    assert!(
        e.to_string()
            .contains("server.tls_cert: cannot read no/such.pem"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("server.tls_key: cannot read no/k.pem"),
        "{e}"
    );
    // TLS only: `listen` may be empty then, but not both.
    let e = p(&GOOD.replace("listen = [\"127.0.0.1:8080\"]", "listen = []")).unwrap_err();
    assert!(e.to_string().contains("`listen` or `tls_listen`"), "{e}");
}

#[test]
fn syntax_error_has_a_line() {
    let e = p("[server\nlisten=1").unwrap_err();
    assert!(e.issues[0].line.is_some());
}

#[test]
fn serves_defaults_from_the_flavour_and_is_validated() {
    use crate::fleet::{Surface, Surfaces};
    let c = p(GOOD).unwrap();
    let cluster = &c.route("m").unwrap().cluster;
    assert_eq!(cluster.serves, Surfaces::for_flavour(Flavour::Vllm));
    assert_eq!(c.server.stored_responses, 100_000);
    let text = GOOD.replace(
        "replicas = [\"127.0.0.1:8101\", \"127.0.0.1:8102\"]",
        "replicas = [\"127.0.0.1:8101\"]\nserves = [\"chat\", \"responses\"]",
    );
    let c = p(&text).unwrap();
    let serves = c.route("m").unwrap().cluster.serves;
    assert!(serves.contains(Surface::Responses) && !serves.contains(Surface::Messages));
    let bad = text.replace("\"responses\"]", "\"ollama\"]");
    let e = p(&bad).unwrap_err().to_string();
    assert!(
        e.contains("clusters[0].serves[1]: unknown surface `ollama`"),
        "{e}"
    );
    let zero = GOOD.replace("[server]\n", "[server]\nstored_responses = 0\n");
    let e = p(&zero).unwrap_err().to_string();
    assert!(e.contains("server.stored_responses"), "{e}");
}

#[test]
fn expose_served_name_defaults_off_and_is_typed() {
    assert!(!p(GOOD).unwrap().route("m").unwrap().expose_served_name);
    let on = format!("{GOOD}expose_served_name = true\n");
    assert!(p(&on).unwrap().route("m").unwrap().expose_served_name);
    let e = p(&format!("{GOOD}expose_served_name = \"yes\"\n")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("t.toml:14:22") && msg.contains("boolean"),
        "{msg}"
    );
}

#[test]
fn each_route_knows_every_served_name_of_its_cluster() {
    let text = format!(
        "{GOOD}\n[[models]]\nalias = \"n\"\ncluster = \"a\"\n\n[[models]]\nalias = \"dup\"\n\
         cluster = \"a\"\nserved_name = \"org/model\"\n"
    );
    let c = p(&text).unwrap();
    for alias in ["m", "n", "dup"] {
        let mut names = c.route(alias).unwrap().cluster_names.to_vec();
        names.sort();
        assert_eq!(names, ["n", "org/model"], "{alias}");
    }
}

#[test]
fn cluster_queue_is_validated_into_settings() {
    let with = |q: &str| GOOD.replace("flavour = \"vllm\"", &format!("flavour = \"vllm\"\n{q}"));
    let c = p(&with("queue = { max_depth = 8, max_wait_ms = 250 }")).unwrap();
    let q = c.route("m").unwrap().cluster.balance.queue.unwrap();
    assert_eq!(q.max_depth, 8);
    assert_eq!(q.max_wait, std::time::Duration::from_millis(250));
    assert!(p(GOOD)
        .unwrap()
        .route("m")
        .unwrap()
        .cluster
        .balance
        .queue
        .is_none());
    for (bad, field) in [
        (
            "queue = { max_depth = 0, max_wait_ms = 250 }",
            "queue.max_depth",
        ),
        (
            "queue = { max_depth = 8, max_wait_ms = 0 }",
            "queue.max_wait_ms",
        ),
        ("queue = { max_depth = 8 }", "max_wait_ms"),
        (
            "queue = { max_depth = 8, max_wait_ms = 1, depth = 2 }",
            "depth",
        ),
    ] {
        let e = p(&with(bad)).unwrap_err().to_string();
        assert!(e.contains(field), "{bad}: {e}");
    }
}

#[test]
fn rate_limit_classes_are_validated() {
    let c = p(&format!(
        "{GOOD}\n[rate_limit_classes.batch]\nrequests_per_minute = 5\n\
         global = {{ max_concurrent = 2 }}\n"
    ))
    .unwrap();
    let batch = c.rate_limit_classes["batch"];
    assert_eq!(batch.per_key.requests_per_minute, Some(5));
    assert_eq!(batch.class.max_concurrent, Some(2));
    for (bad, says) in [
        (
            "[rate_limit_classes.batch]\nrequests_per_minute = 0",
            "greater than 0",
        ),
        (
            "[rate_limit_classes.batch]\nrequests_per_minut = 1",
            "requests_per_minut",
        ),
        ("[rate_limit_classes.\"a b\"]", "class names"),
    ] {
        let e = p(&format!("{GOOD}\n{bad}\n")).unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn scored_policy_takes_its_weights_and_turns_scraping_on() {
    let text = GOOD.replace(
        "replicas = [\"127.0.0.1:8101\", \"127.0.0.1:8102\"]",
        "replicas = [\"127.0.0.1:8101\"]\npolicy = \"scored\"\nscored = { queue = 1, prefix = 5 }",
    );
    let c = p(&text).unwrap();
    let cluster = &c.route("m").unwrap().cluster;
    assert_eq!(cluster.balance.policy, crate::fleet::Policy::Scored);
    let w = cluster.balance.weights;
    assert_eq!((w.queue, w.kv, w.prefix), (1.0, 2.0, 5.0));
    assert!(cluster.scrape.enabled);

    let bad = text.replace("queue = 1", "queue = -1");
    let e = p(&bad).unwrap_err().to_string();
    assert!(e.contains("clusters[0].scored.queue"), "{e}");
    let zero = text.replace(
        "{ queue = 1, prefix = 5 }",
        "{ queue = 0, kv = 0, prefix = 0 }",
    );
    assert!(p(&zero)
        .unwrap_err()
        .to_string()
        .contains("at least one weight"));
    let unknown = text.replace("prefix = 5", "prefx = 5");
    assert!(p(&unknown).unwrap_err().to_string().contains("prefx"));
    assert_eq!(cluster.balance.prefill_tokens_per_s, 10_000.0);
    let rate = text.replace("prefix = 5", "prefix = 5, prefill_tokens_per_s = 4000");
    let c = p(&rate).unwrap();
    assert_eq!(
        c.route("m").unwrap().cluster.balance.prefill_tokens_per_s,
        4000.0
    );
    let zero_rate = text.replace("prefix = 5", "prefix = 5, prefill_tokens_per_s = 0");
    let e = p(&zero_rate).unwrap_err().to_string();
    assert!(e.contains("scored.prefill_tokens_per_s"), "{e}");
}
