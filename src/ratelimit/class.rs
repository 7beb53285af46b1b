//! Rate-limit classes (`[rate_limit_classes]`): a request a rule puts in class `c` counts
//! against the class's per-key limits under the name `<key>@c` and the class's own limits
//! under `@c`, instead of its key's limits. Key names cannot hold `@`, so neither name can be
//! a real key's; in fleet mode they become Redis buckets `k:<key>@c` and `k:@c`.

use std::time::Instant;

use super::limiter::{KeyTicket, RPM};

/// The bucket name of `key`'s requests in `class`.
pub fn key_in_class(key: &str, class: &str) -> String {
    format!("{key}@{class}")
}

/// The bucket name of the whole class.
pub fn whole_class(class: &str) -> String {
    format!("@{class}")
}

impl KeyTicket {
    /// The request turned out not to count against its key (a rule put it in a class): give
    /// back the request taken from the key's requests-per-minute and free its slot.
    pub fn cancel(mut self, now: Instant) {
        if let Some(set) = self.set.take() {
            if let Some(rpm) = set.lock().active(RPM) {
                rpm.adjust(1, now);
            }
            set.release_slot();
        }
    }
}
