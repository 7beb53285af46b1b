use super::*;
use bytes::Bytes;
use proptest::prelude::*;
use serde_json::Value;

fn scan(body: &str) -> Result<RequestFacts, BodyError> {
    BodyScan::parse(body.as_bytes()).map(BodyScan::into_facts)
}

fn parse_value(bytes: &[u8]) -> Value {
    match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(err) => panic!(
            "output is not JSON ({err}): {}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

/// Rewrite only the model and check every other byte is untouched.
fn assert_model_only_rewrite(body: &str, served: &str) -> Bytes {
    let scan = BodyScan::parse(body.as_bytes()).expect("valid body");
    let plan = RewritePlan::new(&scan).model(served);
    let out = plan.apply();
    assert_eq!(out.len(), plan.output_len());
    let span = scan.facts().model_span.clone();
    let encoded = serde_json::to_string(served).expect("encode");
    assert_eq!(&out[..span.start], &body.as_bytes()[..span.start]);
    assert_eq!(
        &out[span.start..span.start + encoded.len()],
        encoded.as_bytes()
    );
    assert_eq!(
        &out[span.start + encoded.len()..],
        &body.as_bytes()[span.end..]
    );
    assert_eq!(parse_value(&out)["model"], Value::from(served));
    out
}

// --- scanning -------------------------------------------------------------

#[test]
fn model_first_middle_last() {
    for body in [
        r#"{"model":"gpt-4","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
        r#"{"messages":[{"role":"user","content":"hi"}],"model":"gpt-4","stream":true}"#,
        r#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"model":"gpt-4"}"#,
    ] {
        let facts = scan(body).expect("valid");
        assert_eq!(facts.model, "gpt-4");
        assert_eq!(&body[facts.model_span.clone()], r#""gpt-4""#);
        assert_eq!(facts.stream, Some(true));
        assert_model_only_rewrite(body, "served/llama-3");
    }
}

#[test]
fn whitespace_everywhere() {
    let body = " \r\n\t{ \n\"messages\" \t:\n [ { \"role\" : \"user\" , \"content\" : \"hi\" } ] \r\n,\n\"model\"\n:\n\t\"m\"\n ,\"max_tokens\" :  12 \n}\n\t ";
    let facts = scan(body).expect("valid");
    assert_eq!(facts.model, "m");
    assert_eq!(&body[facts.model_span.clone()], "\"m\"");
    assert_eq!(facts.max_tokens, Some(12));
    assert_eq!(&body[facts.insert_at - 2..facts.insert_at], "12");
    assert_model_only_rewrite(body, "other");
}

#[test]
fn escaped_strings_around_model_are_not_confused() {
    let body = r#"{"messages":[{"role":"user","content":"say \"model\": \"x\", \"model\":\"y\""}],"model":"real"}"#;
    let facts = scan(body).expect("valid");
    assert_eq!(facts.model, "real");
    let out = assert_model_only_rewrite(body, "served");
    assert!(std::str::from_utf8(&out)
        .expect("utf8")
        .contains(r#"say \"model\": \"x\", \"model\":\"y\""#));
}

#[test]
fn unicode_escapes_in_model_value_are_decoded() {
    let body = r#"{"model":"gpt\u002d4","messages":[]}"#;
    let facts = scan(body).expect("valid");
    assert_eq!(facts.model, "gpt-4");
    assert_eq!(&body[facts.model_span.clone()], r#""gpt\u002d4""#);
    assert_model_only_rewrite(body, "x\"y\\z\u{1F600}");
    let surrogate = r#"{"model":"\ud83d\ude00 \u00e9"}"#;
    assert_eq!(scan(surrogate).expect("valid").model, "\u{1F600} é");
}

#[test]
fn escaped_key_spelling_is_the_model_key() {
    let body = r#"{"mod\u0065l":"m1","messages":[]}"#;
    let facts = scan(body).expect("valid");
    assert_eq!(facts.model, "m1");
    assert_model_only_rewrite(body, "m2");
}

#[test]
fn duplicate_model_is_rejected_plain_and_escaped() {
    for body in [
        r#"{"model":"a","model":"b"}"#,
        r#"{"model":"a","messages":[],"mod\u0065l":"b"}"#,
        r#"{"\u006dodel":"a","model":null}"#,
    ] {
        let err = scan(body).expect_err("duplicate");
        assert_eq!(err, BodyError::DuplicateKey { key: "model" });
        assert_eq!(err.code(), "duplicate_key");
        assert_eq!(err.param(), Some("model"));
        assert_eq!(err.to_string(), "duplicate key 'model' in request body");
    }
}

#[test]
fn duplicate_stream_keys_are_rejected_other_duplicates_allowed() {
    assert_eq!(
        scan(r#"{"model":"m","stream":true,"stream":false}"#),
        Err(BodyError::DuplicateKey { key: "stream" })
    );
    assert_eq!(
        scan(r#"{"model":"m","stream_options":{},"stream_options":null}"#),
        Err(BodyError::DuplicateKey {
            key: "stream_options"
        })
    );
    assert_eq!(
        scan(r#"{"model":"m","stream_options":{"include_usage":true,"include_usage":false}}"#),
        Err(BodyError::DuplicateKey {
            key: "stream_options.include_usage"
        })
    );
    // Informational keys: last wins, like Python's json module.
    let facts = scan(r#"{"model":"m","max_tokens":10,"max_tokens":20,"user":"a","user":"b"}"#)
        .expect("allowed");
    assert_eq!(facts.max_tokens, Some(20));
    assert_eq!(facts.user.as_deref(), Some("b"));
}

#[test]
fn model_wrong_type_missing_or_empty() {
    let cases: [(&str, BodyError); 7] = [
        (
            r#"{"model":null}"#,
            BodyError::ModelNotString { found: "null" },
        ),
        (
            r#"{"model":42}"#,
            BodyError::ModelNotString { found: "number" },
        ),
        (
            r#"{"model":-1.5e3}"#,
            BodyError::ModelNotString { found: "number" },
        ),
        (
            r#"{"model":["a"]}"#,
            BodyError::ModelNotString { found: "array" },
        ),
        (
            r#"{"model":{"name":"a"}}"#,
            BodyError::ModelNotString { found: "object" },
        ),
        (r#"{"messages":[]}"#, BodyError::MissingModel),
        (r#"{"model":""}"#, BodyError::EmptyModel),
    ];
    for (body, expected) in cases {
        let err = scan(body).expect_err(body);
        assert_eq!(err, expected, "{body}");
        assert_eq!(err.param(), Some("model"));
    }
    assert_eq!(BodyError::MissingModel.code(), "missing_model");
    assert_eq!(BodyError::EmptyModel.code(), "invalid_model");
    assert_eq!(
        BodyError::ModelNotString { found: "null" }.to_string(),
        "'model' must be a string, found null"
    );
    assert_eq!(scan("{}"), Err(BodyError::MissingModel));
}

#[test]
fn empty_body() {
    for body in ["", "  \r\n\t "] {
        let err = scan(body).expect_err("empty");
        assert_eq!(err, BodyError::Empty);
        assert_eq!(err.code(), "empty_body");
        assert_eq!(err.param(), None);
    }
}

#[test]
fn invalid_json_reports_line_and_column() {
    let err = scan("{\n  \"model\": \"m\",\n  \"messages\": [,]\n}").expect_err("invalid");
    match &err {
        BodyError::InvalidJson {
            detail,
            line,
            column,
        } => {
            assert_eq!(*line, 3);
            assert!(*column > 0);
            assert!(detail.contains("line 3"), "{detail}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.code(), "invalid_json");
    assert!(err
        .to_string()
        .starts_with("request body is not valid JSON: "));

    for body in [
        r#"{"model":"m""#,
        r#"{"model":"m",}"#,
        r#"{"model" "m"}"#,
        r#"{model:"m"}"#,
        r#"{"model":"m" "x":1}"#,
        r#"{"model":"\x"}"#,
        r#"{"model":"a\u12"}"#,
        "{\"model\":\"tab\there\"}",
        r#"{"model":"m","n":01}"#,
        r#"{"model":"m","t":tru}"#,
        r#"[1,"#,
        "\u{feff}{\"model\":\"m\"}",
        r#"nul"#,
    ] {
        assert_eq!(scan(body).expect_err(body).code(), "invalid_json", "{body}");
    }
}

#[test]
fn invalid_utf8_is_invalid_json() {
    let mut body = br#"{"model":"m","messages":[{"content":""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#""}]}"#);
    let err = BodyScan::parse(&body).expect_err("invalid utf8");
    assert_eq!(err.code(), "invalid_json");

    let mut key = br#"{"model":"m",""#.to_vec();
    key.push(0xc3);
    key.extend_from_slice(br#"":1}"#);
    assert_eq!(
        BodyScan::parse(&key).expect_err("bad key").code(),
        "invalid_json"
    );
}

#[test]
fn top_level_not_an_object() {
    for (body, found) in [
        (r#"[{"model":"m"}]"#, "array"),
        (r#""model""#, "string"),
        ("42", "number"),
        ("-1", "number"),
        ("true", "boolean"),
        (" null ", "null"),
    ] {
        let err = scan(body).expect_err(body);
        assert_eq!(err, BodyError::NotAnObject { found }, "{body}");
        assert_eq!(err.code(), "not_an_object");
    }
}

#[test]
fn trailing_garbage_is_rejected() {
    for body in [
        r#"{"model":"m"}x"#,
        r#"{"model":"m"}{}"#,
        r#"{"model":"m"} ,"#,
        r#"{"model":"m"}}"#,
    ] {
        assert_eq!(scan(body).expect_err(body).code(), "invalid_json", "{body}");
    }
    assert!(scan("{\"model\":\"m\"}\n\r\n\t ").is_ok());
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    let depth = 200_000;
    let body = format!(
        r#"{{"model":"m","messages":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert_eq!(scan(&body).expect("valid").model, "m");
    let array = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    assert_eq!(scan(&array), Err(BodyError::NotAnObject { found: "array" }));
    let unterminated = format!(r#"{{"model":"m","messages":{}"#, "[".repeat(depth));
    assert_eq!(scan(&unterminated).expect_err("eof").code(), "invalid_json");
}

#[test]
fn extracts_request_facts() {
    let body = r#"{
        "model": "m",
        "messages": [{"role":"user","content":"hello"}],
        "prompt": "abc",
        "input": ["x"],
        "stream": true,
        "stream_options": {"include_usage": false, "continuous_usage_stats": true},
        "max_tokens": 256,
        "max_completion_tokens": 128,
        "n": 2,
        "temperature": 0.7,
        "tools": [ {"type":"function"} ],
        "user": "u\u0031"
    }"#;
    let facts = scan(body).expect("valid");
    assert_eq!(facts.stream, Some(true));
    let options = facts.stream_options.clone().expect("stream_options");
    assert!(options.is_object);
    assert_eq!(options.include_usage, IncludeUsage::NotTrue);
    assert_eq!(options.continuous_usage_stats, Some(true));
    assert_eq!(
        &body[options.span],
        r#"{"include_usage": false, "continuous_usage_stats": true}"#
    );
    assert_eq!(facts.max_tokens, Some(256));
    assert_eq!(facts.max_completion_tokens, Some(128));
    assert_eq!(facts.n, Some(2));
    assert_eq!(facts.temperature, Some(0.7));
    assert!(facts.has_tools);
    assert_eq!(facts.user.as_deref(), Some("u1"));
    let messages = r#"[{"role":"user","content":"hello"}]"#;
    assert_eq!(
        facts.prompt_bytes,
        messages.len() + r#""abc""#.len() + r#"["x"]"#.len()
    );
    assert_eq!(&body[facts.insert_at - 9..facts.insert_at], r#""u\u0031""#);
    assert!(!facts.client_requested_usage());
}

#[test]
fn fields_the_proxy_reads_must_have_their_json_type() {
    // Upstreams coerce these (pydantic lax mode), rules would not see them: refused.
    for (field, param, found) in [
        (r#""stream":"yes""#, "stream", "string"),
        (r#""stream":1"#, "stream", "integer"),
        (r#""max_tokens":-1"#, "max_tokens", "negative integer"),
        (
            r#""max_tokens":18446744073709551616"#,
            "max_tokens",
            "out-of-range integer",
        ),
        (r#""n":1.5"#, "n", "non-integer number"),
        (r#""n":"5""#, "n", "string"),
        (
            r#""max_completion_tokens":1e3"#,
            "max_completion_tokens",
            "non-integer number",
        ),
        (
            r#""max_completion_tokens":4000.0"#,
            "max_completion_tokens",
            "non-integer number",
        ),
        (r#""temperature":"hot""#, "temperature", "string"),
        (r#""tools":{}"#, "tools", "object"),
        (r#""user":7"#, "user", "integer"),
    ] {
        let body = format!(r#"{{"model":"m",{field}}}"#);
        let err = scan(&body).expect_err(field);
        assert_eq!(err.param(), Some(param), "{field}");
        assert_eq!(err.code(), "invalid_type", "{field}");
        assert!(err.to_string().contains(found), "{field}: {err}");
    }
    // `null` means absent; integers are numbers for `temperature`.
    let facts =
        scan(r#"{"model":"m","temperature":1,"tools":null,"n":null,"stream":null,"tools":[ ]}"#)
            .expect("valid");
    assert_eq!(facts.temperature, Some(1.0));
    assert!(!facts.has_tools);
    assert_eq!((facts.n, facts.stream), (None, None));
}

#[test]
fn raw_value_and_keys() {
    let body = r#"{"model":"m", "n" : 3 ,"k\u0065y":{"a":1}}"#;
    let scan = BodyScan::parse(body.as_bytes()).expect("valid");
    assert_eq!(scan.raw_value("n"), Some("3"));
    assert_eq!(scan.raw_value("key"), Some(r#"{"a":1}"#));
    assert_eq!(scan.raw_value("missing"), None);
    assert_eq!(scan.keys().collect::<Vec<_>>(), ["model", "n", "key"]);
    assert_eq!(scan.body(), body.as_bytes());
}

#[test]
fn client_requested_usage_only_when_literally_true() {
    let cases = [
        (
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
            true,
        ),
        (r#"{"model":"m","stream":true,"stream_options":{}}"#, false),
        (
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#,
            false,
        ),
        (r#"{"model":"m","stream":true}"#, false),
        (
            r#"{"model":"m","stream_options":{"include_usage":true}}"#,
            false,
        ),
        (
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":"true"}}"#,
            false,
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(
            scan(body).expect("valid").client_requested_usage(),
            expected,
            "{body}"
        );
    }
}

// --- rewriting ------------------------------------------------------------

fn rewrite_with_usage(body: &str) -> (Bytes, StreamUsage) {
    let scan = BodyScan::parse(body.as_bytes()).expect("valid");
    let plan = RewritePlan::new(&scan)
        .model("served")
        .ensure_stream_usage(true);
    let out = plan.apply();
    assert_eq!(out.len(), plan.output_len(), "{body}");
    (out, plan.stream_usage())
}

fn text(bytes: &Bytes) -> &str {
    std::str::from_utf8(bytes).expect("utf8")
}

#[test]
fn injects_stream_options_when_absent() {
    let (out, usage) = rewrite_with_usage("{\"messages\":[],\"stream\":true,\"model\":\"m\"\n}");
    assert_eq!(usage, StreamUsage::Injected);
    assert_eq!(
        text(&out),
        "{\"messages\":[],\"stream\":true,\"model\":\"served\",\"stream_options\":{\"include_usage\":true}\n}"
    );
    assert_eq!(parse_value(&out)["stream_options"]["include_usage"], true);
}

#[test]
fn inserts_include_usage_into_empty_object() {
    let (out, usage) =
        rewrite_with_usage(r#"{"model":"m","stream":true,"stream_options":{ },"n":1}"#);
    assert_eq!(usage, StreamUsage::Injected);
    assert_eq!(
        text(&out),
        r#"{"model":"served","stream":true,"stream_options":{"include_usage":true },"n":1}"#
    );
    let (out, _) = rewrite_with_usage(r#"{"model":"m","stream":true,"stream_options":{}}"#);
    assert_eq!(
        text(&out),
        r#"{"model":"served","stream":true,"stream_options":{"include_usage":true}}"#
    );
}

#[test]
fn inserts_include_usage_into_non_empty_object() {
    let (out, usage) = rewrite_with_usage(
        r#"{"model":"m","stream":true,"stream_options":{ "continuous_usage_stats" : true }}"#,
    );
    assert_eq!(usage, StreamUsage::Injected);
    assert_eq!(
        text(&out),
        r#"{"model":"served","stream":true,"stream_options":{ "continuous_usage_stats" : true,"include_usage":true }}"#
    );
    let value = parse_value(&out);
    assert_eq!(value["stream_options"]["include_usage"], true);
    assert_eq!(value["stream_options"]["continuous_usage_stats"], true);
}

#[test]
fn replaces_non_true_include_usage() {
    for (value, sep) in [
        ("false", ""),
        ("null", " "),
        ("0", ""),
        ("\"yes\"", ""),
        ("{}", ""),
    ] {
        let body = format!(
            r#"{{"model":"m","stream":true,"stream_options":{{"include_usage":{sep}{value}{sep}}}}}"#
        );
        let (out, usage) = rewrite_with_usage(&body);
        assert_eq!(usage, StreamUsage::Injected);
        assert_eq!(
            text(&out),
            format!(
                r#"{{"model":"served","stream":true,"stream_options":{{"include_usage":{sep}true{sep}}}}}"#
            )
        );
    }
    // Escaped inner key spelling is the same key.
    let (out, _) = rewrite_with_usage(
        r#"{"model":"m","stream":true,"stream_options":{"include\u005fusage":false}}"#,
    );
    assert_eq!(
        text(&out),
        r#"{"model":"served","stream":true,"stream_options":{"include\u005fusage":true}}"#
    );
}

#[test]
fn client_true_is_left_alone() {
    let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
    let (out, usage) = rewrite_with_usage(body);
    assert_eq!(usage, StreamUsage::ClientRequested);
    assert_eq!(
        text(&out),
        r#"{"model":"served","stream":true,"stream_options":{"include_usage":true}}"#
    );
}

#[test]
fn non_object_stream_options_is_left_alone() {
    for value in ["null", "true", "[]", "\"x\""] {
        let body = format!(r#"{{"model":"m","stream":true,"stream_options":{value}}}"#);
        let (out, usage) = rewrite_with_usage(&body);
        assert_eq!(usage, StreamUsage::NotRequested);
        assert_eq!(text(&out), body.replace(r#""m""#, r#""served""#));
    }
}

#[test]
fn no_injection_unless_streaming() {
    for body in [
        r#"{"model":"m"}"#,
        r#"{"model":"m","stream":false}"#,
        r#"{"model":"m","stream":false,"stream_options":{}}"#,
        r#"{"model":"m","stream":null,"stream_options":{"include_usage":false}}"#,
    ] {
        let (out, usage) = rewrite_with_usage(body);
        assert_eq!(usage, StreamUsage::NotStreaming, "{body}");
        assert_eq!(text(&out), body.replace(r#""m""#, r#""served""#));
    }
}

#[test]
fn no_injection_when_not_asked() {
    let body = r#"{"model":"m","stream":true,"stream_options":{}}"#;
    let scan = BodyScan::parse(body.as_bytes()).expect("valid");
    let plan = RewritePlan::new(&scan).ensure_stream_usage(false);
    assert_eq!(plan.stream_usage(), StreamUsage::NotRequested);
    assert_eq!(plan.apply(), Bytes::from_static(body.as_bytes()));
    // An empty plan reproduces the body exactly.
    assert_eq!(RewritePlan::new(&scan).apply().as_ref(), body.as_bytes());
}

#[test]
fn set_field_replaces_and_inserts() {
    let body = "{\"model\":\"m\", \"max_tokens\" : 99999 ,\"n\":4,\"messages\":[]\n}";
    let scan = BodyScan::parse(body.as_bytes()).expect("valid");
    let plan = RewritePlan::new(&scan)
        .set_field("max_tokens", 256)
        .set_field("n", 1)
        .set_field("temperature", 0.5)
        .set_field_raw("seed", "7");
    let out = plan.apply();
    assert_eq!(out.len(), plan.output_len());
    assert_eq!(
        text(&out),
        "{\"model\":\"m\", \"max_tokens\" : 256 ,\"n\":1,\"messages\":[],\"temperature\":0.5,\"seed\":7\n}"
    );
}

#[test]
fn set_field_later_call_wins_and_replaces_every_duplicate() {
    let body = r#"{"model":"m","max_tokens":1,"max_tok\u0065ns":2}"#;
    let scan = BodyScan::parse(body.as_bytes()).expect("valid");
    let out = RewritePlan::new(&scan)
        .set_field("max_tokens", 10)
        .set_field("max_tokens", 20)
        .apply();
    assert_eq!(
        text(&out),
        r#"{"model":"m","max_tokens":20,"max_tok\u0065ns":20}"#
    );
}

#[test]
fn set_field_escapes_inserted_keys_and_model_is_a_field() {
    let body = r#"{"model":"m"}"#;
    let scan = BodyScan::parse(body.as_bytes()).expect("valid");
    let out = RewritePlan::new(&scan)
        .set_field("we\"ird", "v")
        .set_field("model", "x")
        .apply();
    assert_eq!(text(&out), r#"{"model":"x","we\"ird":"v"}"#);
}

#[test]
fn set_field_with_stream_usage_and_model_last() {
    let body = r#"{"messages":[],"stream":true,"model":"m"}"#;
    let scan = BodyScan::parse(body.as_bytes()).expect("valid");
    let plan = RewritePlan::new(&scan)
        .model("served")
        .ensure_stream_usage(true)
        .set_field("max_tokens", 5);
    assert_eq!(plan.stream_usage(), StreamUsage::Injected);
    let out = plan.apply();
    assert_eq!(out.len(), plan.output_len());
    assert_eq!(
        text(&out),
        r#"{"messages":[],"stream":true,"model":"served","max_tokens":5,"stream_options":{"include_usage":true}}"#
    );
}

#[test]
fn overriding_stream_changes_usage_decision() {
    let body = r#"{"model":"m","stream":true}"#;
    let scan = BodyScan::parse(body.as_bytes()).expect("valid");
    let plan = RewritePlan::new(&scan)
        .ensure_stream_usage(true)
        .set_field("stream", false);
    assert_eq!(plan.stream_usage(), StreamUsage::NotStreaming);
    assert_eq!(text(&plan.apply()), r#"{"model":"m","stream":false}"#);

    let body = r#"{"model":"m"}"#;
    let scan = BodyScan::parse(body.as_bytes()).expect("valid");
    let plan = RewritePlan::new(&scan)
        .ensure_stream_usage(true)
        .set_field("stream", true);
    assert_eq!(plan.stream_usage(), StreamUsage::Injected);
    assert_eq!(
        text(&plan.apply()),
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
    );

    let body = r#"{"model":"m","stream":true,"stream_options":{}}"#;
    let scan = BodyScan::parse(body.as_bytes()).expect("valid");
    let plan = RewritePlan::new(&scan)
        .ensure_stream_usage(true)
        .set_field_raw("stream_options", r#"{"include_usage":false}"#);
    assert_eq!(plan.stream_usage(), StreamUsage::NotRequested);
    assert_eq!(
        text(&plan.apply()),
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#
    );
}

#[test]
fn sixteen_mib_body_with_model_last() {
    let content = "lorem ipsum \\\"dolor\\\" sit amet \\u00e9 ".repeat(16 * 1024 * 1024 / 38);
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{content}"}}],"stream":true,"model":"gpt-4"}}"#
    );
    assert!(body.len() >= 16 * 1024 * 1024);
    let scan = BodyScan::parse(body.as_bytes()).expect("valid");
    assert_eq!(scan.facts().model, "gpt-4");
    assert!(scan.facts().prompt_bytes > 16 * 1024 * 1024 - 100);
    let plan = RewritePlan::new(&scan)
        .model("served")
        .ensure_stream_usage(true);
    let out = plan.apply();
    assert_eq!(out.len(), plan.output_len());
    assert!(out.ends_with(br#""model":"served","stream_options":{"include_usage":true}}"#));
    assert_eq!(&out[..1000], &body.as_bytes()[..1000]);
}

// --- property tests -------------------------------------------------------

/// Keys the generator must not produce: they change scan or rewrite behaviour.
/// Keys the scanner gives meaning to (typed or unique): random values there are refused.
const RESERVED: [&str; 9] = [
    "model",
    "stream",
    "stream_options",
    "n",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "tools",
    "user",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[a-z\"\\\\/\u{0}-\u{1f}é😀]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[a-z\"\\\\]{0,6}", inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

const WHITESPACE: [&str; 6] = ["", " ", "\n", "\t", "\r\n  ", "   "];

/// Serialise an ordered list of members with chosen whitespace; returns the text.
fn render(entries: &[(String, String)], ws: &[usize]) -> String {
    let mut ws = ws
        .iter()
        .cycle()
        .map(|index| WHITESPACE[index % WHITESPACE.len()]);
    let mut next_ws = || ws.next().unwrap_or("");
    let mut out = String::new();
    out.push_str(next_ws());
    out.push('{');
    for (index, (key, value)) in entries.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(next_ws());
        out.push_str(key);
        out.push_str(next_ws());
        out.push(':');
        out.push_str(next_ws());
        out.push_str(value);
        out.push_str(next_ws());
    }
    out.push('}');
    out.push_str(next_ws());
    out
}

fn serialise(value: &Value, pretty: bool) -> String {
    let result = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    result.expect("serialise")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn rewrite_changes_only_edited_members(
        members in prop::collection::vec(("[a-z_\"\\\\é]{1,8}", json_value(), any::<bool>()), 0..8),
        model in any::<String>().prop_filter("non-empty", |model| !model.is_empty()),
        served in "[ -~é😀]{1,20}",
        model_position in any::<prop::sample::Index>(),
        escaped_model_key in any::<bool>(),
        stream in prop_oneof![Just(None), Just(Some(true)), Just(Some(false))],
        ws in prop::collection::vec(0usize..WHITESPACE.len(), 1..64),
        max_tokens in prop::option::of(0u64..100_000),
    ) {
        let mut expected = serde_json::Map::new();
        let mut entries: Vec<(String, String)> = Vec::new();
        for (key, value, pretty) in members {
            if RESERVED.contains(&key.as_str()) || expected.contains_key(&key) {
                continue;
            }
            entries.push((serialise(&Value::from(key.as_str()), false), serialise(&value, pretty)));
            expected.insert(key, value);
        }
        if let Some(stream) = stream {
            entries.push((r#""stream""#.to_owned(), stream.to_string()));
            expected.insert("stream".to_owned(), Value::from(stream));
        }
        let model_key = if escaped_model_key { r#""mod\u0065l""# } else { r#""model""# };
        let position = model_position.index(entries.len() + 1);
        entries.insert(position, (model_key.to_owned(), serialise(&Value::from(model.as_str()), false)));
        let body = render(&entries, &ws);

        let scan = BodyScan::parse(body.as_bytes()).expect("generated body is valid");
        let facts = scan.facts().clone();
        prop_assert_eq!(&facts.model, &model);
        prop_assert_eq!(facts.stream, stream);

        let mut plan = RewritePlan::new(&scan).model(&served).ensure_stream_usage(true);
        if let Some(max_tokens) = max_tokens {
            plan = plan.set_field("max_tokens", max_tokens);
        }
        let out = plan.apply();
        prop_assert_eq!(out.len(), plan.output_len());

        // Compare against the parsed input rather than `expected`: serde_json's
        // default float parsing does not round-trip every f64 exactly.
        let mut want = parse_value(body.as_bytes());
        prop_assert_eq!(want.as_object().map(|object| object.len()), Some(expected.len() + 1));
        want["model"] = Value::from(served.as_str());
        if let Some(max_tokens) = max_tokens {
            want["max_tokens"] = Value::from(max_tokens);
        }
        let injected = stream == Some(true);
        prop_assert_eq!(plan.stream_usage(), if injected { StreamUsage::Injected } else { StreamUsage::NotStreaming });
        if injected {
            want["stream_options"] = serde_json::json!({"include_usage": true});
        }
        prop_assert_eq!(parse_value(&out), want);

        // Edits are: the model token, plus inserts at `insert_at` (generated
        // keys never collide with `max_tokens`). Every other byte is unchanged.
        let span = facts.model_span.clone();
        let insert_at = facts.insert_at;
        prop_assert!(span.end <= insert_at);
        let served_token = serialise(&Value::from(served.as_str()), false);
        prop_assert_eq!(&out[..span.start], &body.as_bytes()[..span.start]);
        prop_assert_eq!(&out[span.start..span.start + served_token.len()], served_token.as_bytes());
        let shifted = span.start + served_token.len();
        let between = insert_at - span.end;
        prop_assert_eq!(&out[shifted..shifted + between], &body.as_bytes()[span.end..insert_at]);
        let tail = body.len() - insert_at;
        prop_assert_eq!(&out[out.len() - tail..], &body.as_bytes()[insert_at..]);
        prop_assert!(body[insert_at..].trim_start().starts_with('}'), "insert point not before the closing brace");
    }
}
