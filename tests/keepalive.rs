//! Client keep-alive after request bodies beyond Pingora's 64 KiB replay buffer: the replay
//! wrapper hands the real session back in `logging`, so one TCP connection carries request
//! after request whatever their size, on every response path (JSON, stream, upstream error).
//! A raw HTTP/1.1 client over one socket: a closed connection fails the next exchange.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod common;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const SERVED: &str = "meta-llama/Llama-3.1-8B-Instruct";
const MIB: usize = 1024 * 1024;

/// One HTTP/1.1 connection, used for request after request.
struct Connection {
    stream: BufReader<TcpStream>,
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Connection {
    async fn open(proxy: &Proxy) -> Connection {
        let stream = TcpStream::connect(proxy.addr)
            .await
            .expect("connect to the proxy");
        Connection {
            stream: BufReader::new(stream),
        }
    }

    /// Write one request (head, then body); `extra` is more header lines, each ending CRLF.
    async fn send(&mut self, path: &str, body: &[u8], extra: &str) {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: tokengate\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n{extra}\r\n",
            body.len()
        );
        let socket = self.stream.get_mut();
        socket.write_all(head.as_bytes()).await.expect("write head");
        socket.write_all(body).await.expect("write body");
    }

    async fn post(&mut self, path: &str, body: &[u8], extra: &str) -> Reply {
        self.send(path, body, extra).await;
        self.read_reply().await
    }

    async fn read_line(&mut self) -> String {
        let mut line = String::new();
        let n = self.stream.read_line(&mut line).await.expect("read line");
        assert!(n > 0, "the proxy closed the connection");
        line.trim_end_matches(['\r', '\n']).to_string()
    }

    async fn read_reply(&mut self) -> Reply {
        let status_line = self.read_line().await;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.read_line().await;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header line");
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
        };
        if reply
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            reply.body = self.read_chunked().await;
        } else {
            let len: usize = reply
                .header("content-length")
                .expect("a framed response")
                .parse()
                .expect("content-length");
            reply.body = vec![0; len];
            self.stream
                .read_exact(&mut reply.body)
                .await
                .expect("read body");
        }
        reply
    }

    async fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let size_line = self.read_line().await;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or(""), 16)
                .unwrap_or_else(|_| panic!("chunk size {size_line:?}"));
            if size == 0 {
                assert_eq!(self.read_line().await, "", "no trailers expected");
                return body;
            }
            let start = body.len();
            body.resize(start + size, 0);
            self.stream
                .read_exact(&mut body[start..])
                .await
                .expect("read chunk");
            assert_eq!(self.read_line().await, "", "chunk ends with CRLF");
        }
    }
}

fn stream_body_model_last(total_len: usize) -> Vec<u8> {
    let body = chat_body_model_last("m", total_len);
    // `"max_tokens":4,` → `"stream": true,` keeps the length and makes it a stream.
    let text = String::from_utf8(body).expect("ascii");
    let streamed = text.replacen("\"max_tokens\":4,", "\"stream\": true,", 1);
    assert_eq!(streamed.len(), total_len);
    streamed.into_bytes()
}

/// The issue's case: three 1 MiB requests, three answers, one connection.
#[tokio::test]
async fn three_large_requests_share_one_connection() {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(&one_replica(&sim, SERVED));
    let mut conn = Connection::open(&proxy).await;
    for round in 0..3 {
        let reply = conn
            .post("/v1/chat/completions", &chat_body_model_last("m", MIB), "")
            .await;
        assert_eq!(reply.status, 200, "round {round}: {}", reply.json());
        assert_eq!(reply.json()["object"], "chat.completion");
        assert_ne!(reply.header("connection"), Some("close"), "round {round}");
    }
    let seen = sim.requests().await;
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|r| r["model"] == SERVED));
    let open = metric_sum(&proxy, "tokengate_client_connections", &[]).await;
    assert_eq!(open, 1.0, "still the one connection, open");
}

/// Every response path through the wrapper hands the connection back: a stream, a replica
/// error after the wrapper was installed, a small body after large ones.
#[tokio::test]
async fn streams_and_upstream_errors_keep_the_connection_too() {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(&one_replica(&sim, SERVED));
    let mut conn = Connection::open(&proxy).await;

    let stream = conn
        .post("/v1/chat/completions", &stream_body_model_last(MIB), "")
        .await;
    assert_eq!(stream.status, 200);
    let text = String::from_utf8(stream.body).expect("utf-8 stream");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    sim.set_faults(serde_json::json!({"fail_next": 1})).await;
    let failed = conn
        .post(
            "/v1/chat/completions",
            &chat_body_model_last("m", 2 * MIB),
            "",
        )
        .await;
    assert_eq!(failed.status, 503, "{}", failed.json());
    assert!(failed.json()["error"]["message"].is_string());

    let small = conn
        .post(
            "/v1/chat/completions",
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
            "",
        )
        .await;
    assert_eq!(small.status, 200, "{}", small.json());
    assert_eq!(sim.requests().await.len(), 3);
}

/// The client still decides: `Connection: close` on a large body closes after the answer.
#[tokio::test]
async fn a_client_asking_to_close_is_closed() {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(&one_replica(&sim, SERVED));
    let mut conn = Connection::open(&proxy).await;
    let reply = conn
        .post(
            "/v1/chat/completions",
            &chat_body_model_last("m", MIB),
            "Connection: close\r\n",
        )
        .await;
    assert_eq!(reply.status, 200);
    let mut rest = Vec::new();
    let n = conn.stream.read_to_end(&mut rest).await.expect("read eof");
    assert_eq!(n, 0, "nothing after the answer, then EOF");
}

/// HTTP/2 (h2c): a large body over an HTTP/2 stream through the wrapper, answered whole, and
/// the connection's stream session handed back. One request per curl run: Debian 12's curl
/// 7.88.1 fails on reusing a prior-knowledge connection (curl#10634, fixed in 8.0).
#[tokio::test]
async fn a_large_body_over_h2c_is_answered() {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(&one_replica(&sim, SERVED));
    let dir = tempfile::tempdir().expect("tempdir");
    let body_file = dir.path().join("body.json");
    std::fs::write(&body_file, chat_body_model_last("m", MIB)).expect("write body");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "60", "--http2-prior-knowledge"])
        .args(["-H", "content-type: application/json", "--data-binary"])
        .arg(format!("@{}", body_file.display()))
        .args(["-w", "\n%{http_version} %{http_code}"])
        .arg(proxy.url("/v1/chat/completions"))
        .output()
        .expect("curl is needed (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').expect("curl's status line");
    assert_eq!(
        status,
        "2 200",
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(sim.requests().await.len(), 1);
}

/// A client that hangs up mid-stream after a large body: the session handed back is simply
/// closed, the request is logged as 499 `client_closed`, and the proxy serves the next client.
#[tokio::test]
async fn a_client_leaving_mid_stream_after_a_large_body() {
    let sim = Sim::start(&[
        "--served-model-name",
        SERVED,
        "--itl-ms",
        "100",
        "--tokens",
        "50",
    ]);
    let proxy = Proxy::start(&one_replica(&sim, SERVED));
    {
        let mut conn = Connection::open(&proxy).await;
        conn.send("/v1/chat/completions", &stream_body_model_last(MIB), "")
            .await;
        assert!(conn.read_line().await.starts_with("HTTP/1.1 200"));
    } // dropped: the client is gone mid-stream
    assert_eventually(
        std::time::Duration::from_secs(20),
        "the cut stream logged as 499",
        || async { proxy.access_log().iter().any(|r| r["status"] == 499) },
    )
    .await;
    let mut next = Connection::open(&proxy).await;
    let reply = next
        .post("/v1/chat/completions", &chat_body_model_last("m", MIB), "")
        .await;
    assert_eq!(reply.status, 200);
}
