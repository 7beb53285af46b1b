//! `GET /admin/requests?limit=&key=&model=&status=&since=`: the last finished requests from
//! the recent-requests ring, newest first, as the access log writes them.

use http::{Response, StatusCode};
use serde_json::json;

use super::reply::{error_reply_param, json_reply};
use crate::recent::Filter;
use crate::state::AppState;

pub fn list(state: &AppState, query: Option<&str>) -> Response<Vec<u8>> {
    let capacity = state.recent.capacity();
    let filter = match Filter::parse(query, capacity) {
        Ok(f) => f,
        Err(e) => {
            return error_reply_param(
                StatusCode::BAD_REQUEST,
                &format!("Invalid query parameter {e}."),
                "invalid_filter",
                &e.param,
            )
        }
    };
    let hits = state.recent.query(&filter);
    let data: Vec<&crate::accesslog::Entry> = hits.iter().map(|e| &**e).collect();
    json_reply(
        StatusCode::OK,
        &json!({ "object": "list", "capacity": capacity, "data": data }),
    )
}
