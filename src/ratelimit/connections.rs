//! Caps on concurrent client connections, in total and per client IP (issue #13): kept below
//! the file-descriptor limit so that idle or slow sockets can never take the descriptors the
//! proxy needs for its own upstream connections and health probes. A connection holds a
//! [`ConnectionPermit`] for its whole life; dropping it frees the place. Pure logic: no
//! Pingora types.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

/// Connections kept free of client sockets whatever the fd limit: listeners, log and config
/// files, Redis, probes.
const RESERVED_DESCRIPTORS: u64 = 128;
/// Never derive a cap below this (a tiny fd limit is the operator's to fix).
const MIN_DERIVED_CAP: u64 = 32;

/// The caps in force (from the config snapshot; a reload changes them for new connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Client connections all listeners together may hold.
    pub total: usize,
    /// Client connections one IP address may hold; `None`: no per-IP cap.
    pub per_ip: Option<usize>,
}

/// The default total cap for a process allowed `fd_limit` descriptors: every client
/// connection may need one upstream connection too, so half of what is left after a reserve.
pub fn default_total(fd_limit: u64) -> usize {
    let cap = (fd_limit.saturating_sub(RESERVED_DESCRIPTORS) / 2).max(MIN_DERIVED_CAP);
    usize::try_from(cap).unwrap_or(usize::MAX)
}

/// Why a connection was turned away (also the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    Total,
    PerIp,
}

impl ConnectionRefusal {
    pub fn label(self) -> &'static str {
        match self {
            ConnectionRefusal::Total => "total",
            ConnectionRefusal::PerIp => "per_ip",
        }
    }
}

/// Open connections, shared by all listeners.
#[derive(Debug, Default)]
pub struct ConnectionTable {
    open: AtomicUsize,
    /// Only connections admitted while a per-IP cap was set are counted here.
    per_ip: DashMap<IpAddr, usize>,
}

/// One admitted connection's place; frees it on drop.
#[derive(Debug)]
pub struct ConnectionPermit {
    table: Arc<ConnectionTable>,
    /// The IP counted in `per_ip` (`None` when no per-IP cap applied at admission).
    counted_ip: Option<IpAddr>,
}

impl ConnectionTable {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections open now from `ip` (counted only while a per-IP cap is set).
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).map_or(0, |n| *n)
    }

    /// Take a place for a connection from `ip` (`None`: not an IP peer, e.g. a Unix socket).
    pub fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        limits: ConnectionLimits,
    ) -> Result<ConnectionPermit, ConnectionRefusal> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= limits.total {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(ConnectionRefusal::Total);
        }
        let mut permit = ConnectionPermit {
            table: Arc::clone(self),
            counted_ip: None,
        };
        if let (Some(cap), Some(ip)) = (limits.per_ip, ip) {
            let mut count = self.per_ip.entry(ip).or_insert(0);
            if *count >= cap {
                // Dropping `permit` gives the total place back.
                return Err(ConnectionRefusal::PerIp);
            }
            *count += 1;
            permit.counted_ip = Some(ip);
        }
        Ok(permit)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.table.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.counted_ip {
            // Remove the entry at zero so the map stays as small as the set of open peers.
            self.table.per_ip.remove_if_mut(&ip, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn the_total_cap_holds_and_frees_on_drop() {
        let table = Arc::new(ConnectionTable::default());
        let limits = ConnectionLimits {
            total: 2,
            per_ip: None,
        };
        let a = table.admit(ip(1), limits).unwrap();
        let _b = table.admit(ip(2), limits).unwrap();
        assert_eq!(
            table.admit(ip(3), limits).unwrap_err(),
            ConnectionRefusal::Total
        );
        assert_eq!(table.open(), 2);
        drop(a);
        assert!(table.admit(ip(3), limits).is_ok());
    }

    #[test]
    fn the_per_ip_cap_holds_per_address_and_the_map_empties() {
        let table = Arc::new(ConnectionTable::default());
        let limits = ConnectionLimits {
            total: 10,
            per_ip: Some(2),
        };
        let a1 = table.admit(ip(1), limits).unwrap();
        let a2 = table.admit(ip(1), limits).unwrap();
        assert_eq!(
            table.admit(ip(1), limits).unwrap_err(),
            ConnectionRefusal::PerIp
        );
        // A refusal gives its total place back.
        assert_eq!(table.open(), 2);
        let _b = table.admit(ip(2), limits).unwrap();
        drop((a1, a2));
        assert_eq!(table.open_from(ip(1).unwrap()), 0);
        assert!(!table.per_ip.contains_key(&ip(1).unwrap()));
    }

    #[test]
    fn a_cap_set_by_a_reload_does_not_miscount_older_connections() {
        let table = Arc::new(ConnectionTable::default());
        let before = ConnectionLimits {
            total: 10,
            per_ip: None,
        };
        let old = table.admit(ip(1), before).unwrap();
        let after = ConnectionLimits {
            per_ip: Some(1),
            ..before
        };
        let new = table.admit(ip(1), after).unwrap();
        drop(old);
        assert_eq!(table.open_from(ip(1).unwrap()), 1);
        drop(new);
        assert_eq!(table.open(), 0);
        assert_eq!(table.open_from(ip(1).unwrap()), 0);
    }

    #[test]
    fn peers_without_an_ip_count_only_in_the_total() {
        let table = Arc::new(ConnectionTable::default());
        let limits = ConnectionLimits {
            total: 1,
            per_ip: Some(1),
        };
        let _p = table.admit(None, limits).unwrap();
        assert!(table.admit(None, limits).is_err());
    }

    #[test]
    fn the_default_cap_leaves_room_for_upstream_connections() {
        assert_eq!(default_total(20_000), 9_936);
        assert_eq!(default_total(262_144), 131_008);
        assert_eq!(default_total(100), 32);
    }
}
