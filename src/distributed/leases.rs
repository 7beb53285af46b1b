//! The lease exchange: every sync interval, one pipelined script call per scope whose
//! buckets want something (top-up, return, debt), over the one multiplexed connection.

use std::time::Instant;

use futures_util::future::join_all;

use super::scripts::LEASE;
use super::{metrics, FleetError, FleetLink};
use crate::ratelimit::lease::Grant;
use crate::ratelimit::lease_sync::LeaseBatch;
use crate::ratelimit::Limiter;

async fn exchange(link: &FleetLink, batch: &LeaseBatch) -> Result<Vec<Grant>, FleetError> {
    let mut conn = link.conn()?;
    let mut invocation = LEASE.prepare_invoke();
    for d in &batch.dims {
        invocation
            .key(link.names.bucket(batch.scope, &batch.name, d.dim.field()))
            .arg(d.capacity)
            .arg(d.period_ms)
            .arg(d.op.give)
            .arg(d.op.want);
    }
    let rows: Vec<(i64, i64, i64)> = link.timed(invocation.invoke_async(&mut conn)).await?;
    if rows.len() != batch.dims.len() {
        return Err(FleetError::Unreachable(
            "lease script answered short".into(),
        ));
    }
    Ok(rows
        .into_iter()
        .map(|(granted, remaining, wait_ms)| Grant {
            granted: u64::try_from(granted).unwrap_or(0),
            remaining: u64::try_from(remaining).unwrap_or(0),
            wait: std::time::Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)),
        })
        .collect())
}

/// Checks that Redis answers (used while it is down, instead of exchanging).
pub async fn ping(link: &FleetLink) -> Result<(), FleetError> {
    let mut conn = link.conn()?;
    let pong: String = link
        .timed(redis::cmd("PING").query_async(&mut conn))
        .await?;
    if pong == "PONG" {
        Ok(())
    } else {
        Err(FleetError::Unreachable(format!("PING answered {pong}")))
    }
}

/// One round. While Redis is down it only pings; the buckets spend their leases, then their
/// fallback, and settle the outage as debt once the exchange works again.
pub async fn sync_once(link: &FleetLink, limiter: &Limiter) {
    if !link.is_up() {
        if ping(link).await.is_err() {
            return;
        }
        link.set_up(true);
    }
    let batches = limiter.plan_leases(Instant::now());
    if batches.is_empty() {
        return;
    }
    let results = join_all(batches.iter().map(|b| exchange(link, b))).await;
    let mut failed = None;
    for (batch, result) in batches.into_iter().zip(results) {
        match result {
            Ok(grants) => {
                metrics::LEASE_CALLS.with_label_values(&["ok"]).inc();
                metrics::LEASED_TOKENS.inc_by(grants.iter().map(|g| g.granted).sum());
                limiter.apply_leases(batch, Some(&grants));
            }
            Err(e) => {
                metrics::LEASE_CALLS.with_label_values(&["failed"]).inc();
                limiter.apply_leases(batch, None);
                failed = Some(e);
            }
        }
    }
    if let Some(e) = failed {
        if link.set_up(false) {
            log::warn!("fleet: lease exchange failed: {e}");
        }
    }
}
