//! The fleet as Redis sees it: the heartbeat (live instances with a TTL), the usage counters
//! pushed in batches, and fleet-wide reloads.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{json, Value};

use super::scripts::HEARTBEAT;
use super::{metrics, FleetError, FleetLink};
use crate::usage_totals::{UsageCounts, UsageSnapshot};

/// An instance is live while it beat within this many heartbeats.
const TTL_BEATS: u32 = 3;

/// Registers this instance; returns the number of live instances.
pub async fn heartbeat(link: &FleetLink, info: &Value) -> Result<u32, FleetError> {
    let mut conn = link.conn()?;
    let ttl = link.settings.heartbeat * TTL_BEATS;
    let mut invocation = HEARTBEAT.prepare_invoke();
    invocation
        .key(link.names.instances())
        .key(link.names.instance_info(&link.settings.instance_id))
        .arg(&link.settings.instance_id)
        .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
        .arg(info.to_string());
    let n: u32 = link.timed(invocation.invoke_async(&mut conn)).await?;
    link.lease.set_instances(n);
    metrics::INSTANCES.set(i64::from(n));
    Ok(n)
}

/// `GET /admin/fleet`: every live instance's last heartbeat.
pub async fn instances(link: &FleetLink) -> Result<Vec<Value>, FleetError> {
    let mut conn = link.conn()?;
    let ids: Vec<String> = link
        .timed(
            redis::cmd("ZRANGE")
                .arg(link.names.instances())
                .arg(0)
                .arg(-1)
                .query_async(&mut conn),
        )
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| link.names.instance_info(id)).collect();
    let infos: Vec<Option<String>> = link
        .timed(redis::cmd("MGET").arg(&keys).query_async(&mut conn))
        .await?;
    Ok(infos
        .into_iter()
        .flatten()
        .filter_map(|s| serde_json::from_str(&s).ok())
        .collect())
}

fn add(
    out: &mut Vec<(String, i64)>,
    scope: &str,
    name: &str,
    now: &UsageCounts,
    was: &UsageCounts,
) {
    let fields = [
        ("requests", now.requests, was.requests),
        ("prompt_tokens", now.prompt_tokens, was.prompt_tokens),
        (
            "completion_tokens",
            now.completion_tokens,
            was.completion_tokens,
        ),
        ("total_tokens", now.total_tokens, was.total_tokens),
    ];
    for (field, a, b) in fields {
        if a > b {
            let delta = i64::try_from(a - b).unwrap_or(i64::MAX);
            out.push((format!("{scope}\t{name}\t{field}"), delta));
        }
    }
}

/// The counters grown since `pushed`, as (hash field, increment).
pub fn usage_deltas(now: &UsageSnapshot, pushed: &UsageSnapshot) -> Vec<(String, i64)> {
    let zero = UsageCounts::default();
    let mut out = Vec::new();
    for (name, c) in &now.keys {
        add(
            &mut out,
            "key",
            name,
            c,
            pushed.keys.get(name).unwrap_or(&zero),
        );
    }
    for (name, c) in &now.models {
        add(
            &mut out,
            "model",
            name,
            c,
            pushed.models.get(name).unwrap_or(&zero),
        );
    }
    out
}

/// Adds this instance's growth to the fleet totals in one pipeline.
pub async fn push_usage(link: &FleetLink, deltas: &[(String, i64)]) -> Result<(), FleetError> {
    if deltas.is_empty() {
        return Ok(());
    }
    let mut conn = link.conn()?;
    let mut pipe = redis::pipe();
    for (field, delta) in deltas {
        pipe.hincr(link.names.usage(), field, *delta).ignore();
    }
    link.timed(pipe.query_async::<()>(&mut conn)).await
}

/// `GET /admin/usage?scope=fleet`: totals per key and per model across every instance.
pub async fn fleet_usage(link: &FleetLink) -> Result<Value, FleetError> {
    let mut conn = link.conn()?;
    let raw: HashMap<String, i64> = link
        .timed(
            redis::cmd("HGETALL")
                .arg(link.names.usage())
                .query_async(&mut conn),
        )
        .await?;
    let mut keys: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    let mut models: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for (field, value) in raw {
        let mut parts = field.splitn(3, '\t');
        let (Some(scope), Some(name), Some(what)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let map = if scope == "key" {
            &mut keys
        } else {
            &mut models
        };
        map.entry(name.to_string())
            .or_default()
            .insert(what.to_string(), value);
    }
    Ok(json!({ "scope": "fleet", "keys": keys, "models": models }))
}

/// `POST /admin/reload?scope=fleet`: asks every instance (this one too) to reload and
/// collects each one's answer for up to `wait`.
pub async fn reload_all(link: &FleetLink, wait: Duration) -> Result<Value, FleetError> {
    let live = instances(link).await?.len();
    let mut id = [0u8; 8];
    getrandom::getrandom(&mut id).map_err(|e| FleetError::Unreachable(e.to_string()))?;
    let request = hex::encode(id);
    let mut conn = link.conn()?;
    let _: i64 = link
        .timed(
            redis::cmd("PUBLISH")
                .arg(link.names.reload_channel())
                .arg(&request)
                .query_async(&mut conn),
        )
        .await?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let answers: HashMap<String, String> = link
            .timed(
                redis::cmd("HGETALL")
                    .arg(link.names.reload_results(&request))
                    .query_async(&mut conn),
            )
            .await?;
        if answers.len() >= live || tokio::time::Instant::now() >= deadline {
            let results: BTreeMap<String, Value> = answers
                .into_iter()
                .map(|(k, v)| (k, serde_json::from_str(&v).unwrap_or(Value::Null)))
                .collect();
            return Ok(json!({
                "request": request,
                "instances_live": live,
                "answered": results.len(),
                "results": results,
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records this instance's answer to a fleet reload.
pub async fn answer_reload(
    link: &FleetLink,
    request: &str,
    result: &Value,
) -> Result<(), FleetError> {
    let mut conn = link.conn()?;
    let key = link.names.reload_results(request);
    link.timed(
        redis::pipe()
            .hset(&key, &link.settings.instance_id, result.to_string())
            .ignore()
            .pexpire(&key, 60_000)
            .ignore()
            .query_async::<()>(&mut conn),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_are_only_growth() {
        let mut a = UsageSnapshot::default();
        let mut b = UsageSnapshot::default();
        a.keys.insert(
            "k".into(),
            UsageCounts {
                requests: 5,
                prompt_tokens: 10,
                completion_tokens: 0,
                total_tokens: 10,
            },
        );
        b.keys.insert(
            "k".into(),
            UsageCounts {
                requests: 3,
                prompt_tokens: 10,
                completion_tokens: 0,
                total_tokens: 10,
            },
        );
        assert_eq!(
            usage_deltas(&a, &b),
            vec![("key\tk\trequests".to_string(), 2)]
        );
        assert_eq!(usage_deltas(&a, &a), vec![]);
    }
}
