//! Replica choice within a cluster: round robin that skips replicas already tried for this
//! request. Pure logic; the cursor is shared per cluster.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Pick the next replica index in round-robin order that is not in `tried`.
/// `None` when every replica has been tried.
pub fn next_round_robin(replicas: usize, cursor: &AtomicUsize, tried: &[usize]) -> Option<usize> {
    if replicas == 0 || tried.len() >= replicas {
        return None;
    }
    let start = cursor.fetch_add(1, Ordering::Relaxed);
    (0..replicas)
        .map(|k| (start + k) % replicas)
        .find(|i| !tried.contains(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_over_all_replicas() {
        let c = AtomicUsize::new(0);
        let picks: Vec<_> = (0..6)
            .map(|_| next_round_robin(3, &c, &[]).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn skips_tried_and_ends() {
        let c = AtomicUsize::new(0);
        assert_eq!(next_round_robin(3, &c, &[0, 1]), Some(2));
        assert_eq!(next_round_robin(3, &c, &[0, 1, 2]), None);
        assert_eq!(next_round_robin(0, &c, &[]), None);
    }
}
