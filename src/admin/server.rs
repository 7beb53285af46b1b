//! The admin listener's HTTP application: every request is answered whole by [`AdminApp`],
//! except `GET /admin/events`, which streams (Pingora's `ServeHttp` only sends whole
//! responses, so this is the `HttpServerApp` it would otherwise provide).

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;

use super::AdminApp;

pub struct AdminServer {
    app: AdminApp,
}

impl AdminServer {
    pub fn new(app: AdminApp) -> AdminServer {
        AdminServer { app }
    }
}

#[async_trait]
impl HttpServerApp for AdminServer {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match http.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                log::debug!("admin: cannot read a request: {e}");
                return None;
            }
        }
        http.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let header = http.req_header();
        if header.method == http::Method::GET && header.uri.path() == "/admin/events" {
            match self.app.authorized(&http) {
                Ok(()) => super::events_api::stream(&self.app.state, http, shutdown.clone()).await,
                Err(denied) => {
                    write_reply(http, *denied).await;
                }
            }
            return None;
        }
        let reply = self.app.response(&mut http).await;
        write_reply(http, reply).await
    }
}

/// Send a whole response; the connection for the next request, if it can be reused.
pub async fn write_reply(
    mut http: ServerSession,
    reply: Response<Vec<u8>>,
) -> Option<ReusedHttpStream> {
    let (parts, body) = reply.into_parts();
    let header: ResponseHeader = parts.into();
    if let Err(e) = http.write_response_header(Box::new(header)).await {
        log::debug!("admin: cannot write a response: {e}");
        return None;
    }
    if !body.is_empty() {
        if let Err(e) = http.write_response_body(body.into(), true).await {
            log::debug!("admin: cannot write a response body: {e}");
            return None;
        }
    }
    let settings = HttpPersistentSettings::for_session(&http);
    match http.finish().await {
        Ok(stream) => stream.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
        Err(e) => {
            log::debug!("admin: cannot finish a response: {e}");
            None
        }
    }
}
