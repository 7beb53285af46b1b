//! The live event stream behind `GET /admin/events` (Server-Sent Events): replica health
//! changes, reload results and a once-a-second summary. Publishers serialize each event once
//! into an SSE frame and hand it to a tokio broadcast channel: a send never waits, whatever
//! the subscribers do. A subscriber that falls more than [`BUFFERED_EVENTS`] behind loses
//! them (`Lagged`) and its stream is closed; at most [`MAX_SUBSCRIBERS`] streams are open.

pub mod summary;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

/// Events a subscriber may fall behind by before it is dropped.
pub const BUFFERED_EVENTS: usize = 256;
/// Open event streams at once; more are refused (503).
pub const MAX_SUBSCRIBERS: usize = 32;

/// One SSE frame: `event: <kind>\ndata: <json>\n\n`.
pub type Frame = Arc<str>;

pub struct EventHub {
    tx: broadcast::Sender<Frame>,
    subscribers: Arc<AtomicUsize>,
    max: usize,
}

/// An open stream's receiver; dropping it frees its place.
pub struct Subscription {
    pub rx: broadcast::Receiver<Frame>,
    count: Arc<AtomicUsize>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub::new(BUFFERED_EVENTS, MAX_SUBSCRIBERS)
    }
}

impl EventHub {
    pub fn new(buffer: usize, max_subscribers: usize) -> EventHub {
        let (tx, _) = broadcast::channel(buffer.max(1));
        EventHub {
            tx,
            subscribers: Arc::new(AtomicUsize::new(0)),
            max: max_subscribers,
        }
    }

    /// A new stream, or `None` when [`MAX_SUBSCRIBERS`] are open.
    pub fn subscribe(&self) -> Option<Subscription> {
        self.subscribers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(Subscription {
            rx: self.tx.subscribe(),
            count: self.subscribers.clone(),
        })
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Acquire)
    }

    /// Send one event to every open stream; never waits. Nothing is serialized when no
    /// stream is open.
    pub fn publish<T: Serialize>(&self, kind: &str, data: &T) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let _ = self.tx.send(frame(kind, data));
    }
}

/// The SSE frame of one event (JSON is one line: no `data:` continuation needed).
pub fn frame<T: Serialize>(kind: &str, data: &T) -> Frame {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    format!("event: {kind}\ndata: {json}\n\n").into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn subscribers_are_bounded_and_slow_ones_lag() {
        let hub = EventHub::new(4, 2);
        let mut a = hub.subscribe().unwrap();
        let b = hub.subscribe().unwrap();
        assert!(hub.subscribe().is_none(), "a third stream is refused");
        drop(b);
        let _c = hub.subscribe().expect("a freed place is reused");
        for n in 0..10 {
            hub.publish("tick", &n);
        }
        assert!(matches!(
            a.rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(6))
        ));
        assert_eq!(&*a.rx.recv().await.unwrap(), "event: tick\ndata: 6\n\n");
    }
}
