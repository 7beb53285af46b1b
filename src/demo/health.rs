//! Prints each replica's health change as the proxy sees it (`GET /admin/replicas`), so the
//! demo shows a replica leaving and rejoining the rotation.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde::Deserialize;

#[derive(Deserialize)]
struct List {
    data: Vec<View>,
}

#[derive(Deserialize)]
struct View {
    id: String,
    state: String,
    last_error: Option<LastError>,
}

#[derive(Deserialize)]
struct LastError {
    kind: serde_json::Value,
}

pub struct HealthWatch {
    admin: SocketAddr,
    token: Option<String>,
    /// Replica id → last printed state; empty until the first successful poll.
    seen: BTreeMap<String, String>,
}

impl HealthWatch {
    pub fn new(admin: SocketAddr, token: Option<String>) -> Self {
        Self {
            admin,
            token,
            seen: BTreeMap::new(),
        }
    }

    /// Poll once and print every change since the last poll. A failed poll prints nothing:
    /// the proxy's own exit is reported by the supervisor.
    pub fn poll(&mut self) {
        let Some(list) = self.fetch() else { return };
        let first = self.seen.is_empty();
        for v in list.data {
            let old = self.seen.insert(v.id.clone(), v.state.clone());
            if first || old.as_deref() == Some(v.state.as_str()) {
                continue;
            }
            let why = match (&v.last_error, v.state.as_str()) {
                (Some(e), "unhealthy" | "ejected") => format!(" (last error: {})", e.kind),
                _ => String::new(),
            };
            println!(
                "demo: health of {}: {} -> {}{why}",
                v.id,
                old.as_deref().unwrap_or("unknown"),
                v.state
            );
        }
    }

    fn fetch(&self) -> Option<List> {
        let timeout = Duration::from_secs(1);
        let mut s = TcpStream::connect_timeout(&self.admin, timeout).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        s.set_write_timeout(Some(timeout)).ok()?;
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET /admin/replicas HTTP/1.1\r\nhost: {}\r\n{auth}connection: close\r\n\r\n",
            self.admin
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut raw = Vec::new();
        s.take(4 << 20).read_to_end(&mut raw).ok()?;
        let split = memchr::memmem::find(&raw, b"\r\n\r\n")?;
        if !raw.starts_with(b"HTTP/1.1 200") {
            return None;
        }
        serde_json::from_slice(&raw[split + 4..]).ok()
    }
}
