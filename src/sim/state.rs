//! Shared simulator state: request records, counters and the current faults.
//!
//! Everything sits behind one mutex: the simulator handles test traffic, not millions of
//! requests, and a single lock keeps counters and records consistent with each other.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde_json::Value;

use super::faults::Faults;
use super::request::RequestSummary;

/// Request bodies up to this size are kept verbatim in the records.
pub const RECORDED_BODY_LIMIT: usize = 64 * 1024;

/// How a request ended, as seen by the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Still being answered.
    InFlight,
    /// Answered in full (success or an error status).
    Ok,
    /// Stream ended with the mid-stream error event.
    MidstreamError,
    /// Connection deliberately aborted by `cut_after_tokens`.
    Cut,
    /// The client went away first.
    Abandoned,
}

/// One completion / embedding request, as returned by `GET /sim/requests`.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub seq: u64,
    pub replica: String,
    pub path: String,
    pub model: Option<String>,
    /// Exact number of body bytes received.
    pub body_len: usize,
    pub stream: bool,
    /// `stream_options.include_usage` exactly as sent (null when absent).
    pub include_usage: Option<Value>,
    pub max_tokens: Option<u64>,
    pub x_request_id: Option<String>,
    /// Every request header, lower-case names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    pub prompt_tokens: Option<u64>,
    /// Completion tokens actually sent, summed over choices.
    pub completion_tokens: u64,
    /// Response status; null until decided.
    pub status: Option<u16>,
    pub abandoned: bool,
    pub completed: bool,
    pub outcome: Outcome,
    /// The request body when it is at most [`RECORDED_BODY_LIMIT`] bytes.
    pub body: Option<String>,
}

/// Length and (when small enough) text of a request body.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedBody {
    pub len: usize,
    pub text: Option<String>,
}

impl RecordedBody {
    pub fn of(body: &[u8]) -> Self {
        Self {
            len: body.len(),
            text: (body.len() <= RECORDED_BODY_LIMIT)
                .then(|| String::from_utf8_lossy(body).into_owned()),
        }
    }
}

impl RequestRecord {
    /// A record for a request just received; `seq` is assigned by [`SimState::begin_request`].
    pub fn new(
        replica: &str,
        path: &str,
        summary: RequestSummary,
        x_request_id: Option<String>,
        headers: BTreeMap<String, String>,
        body: RecordedBody,
    ) -> Self {
        Self {
            seq: 0,
            replica: replica.to_owned(),
            path: path.to_owned(),
            model: summary.model,
            body_len: body.len,
            stream: summary.stream,
            include_usage: summary.include_usage,
            max_tokens: summary.max_tokens,
            x_request_id,
            headers,
            prompt_tokens: None,
            completion_tokens: 0,
            status: None,
            abandoned: false,
            completed: false,
            outcome: Outcome::InFlight,
            body: body.text,
        }
    }
}

/// Counters returned by `GET /sim/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub requests_total: u64,
    pub in_flight: u64,
    pub peak_in_flight: u64,
    pub abandoned_total: u64,
    pub completed_total: u64,
}

#[derive(Debug, Default)]
struct Inner {
    faults: Faults,
    /// `(internal id, record)`, ids strictly increasing so lookups can binary search.
    records: Vec<(u64, RequestRecord)>,
    next_id: u64,
    next_seq: u64,
    /// Bumped by reset, so requests begun earlier stop touching the new counters.
    epoch: u64,
    stats: Stats,
}

/// State shared by every connection.
#[derive(Debug)]
pub struct SimState {
    inner: Mutex<Inner>,
}

impl SimState {
    pub fn new(faults: Faults) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                faults,
                next_seq: 1,
                ..Inner::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// Applies a partial fault update (see [`Faults::apply_patch`]).
    pub fn update_faults(&self, patch: &Value) -> Result<Faults, super::faults::FaultUpdateError> {
        let mut inner = self.lock();
        inner.faults.apply_patch(patch)?;
        Ok(inner.faults.clone())
    }

    /// Consumes one `fail_next` credit; true when this request must fail.
    pub fn take_fail_next(&self) -> bool {
        let mut inner = self.lock();
        if inner.faults.fail_next > 0 {
            inner.faults.fail_next -= 1;
            true
        } else {
            false
        }
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats
    }

    pub fn in_flight(&self) -> u64 {
        self.lock().stats.in_flight
    }

    pub fn records(&self) -> Vec<RequestRecord> {
        self.lock()
            .records
            .iter()
            .map(|(_, record)| record.clone())
            .collect()
    }

    /// Clears records and counters (not faults). Requests still running keep counting
    /// as in flight, but their ends no longer touch the new counters.
    pub fn reset(&self) {
        let mut inner = self.lock();
        inner.records.clear();
        inner.next_seq = 1;
        inner.epoch += 1;
        let in_flight = inner.stats.in_flight;
        inner.stats = Stats {
            in_flight,
            peak_in_flight: in_flight,
            ..Stats::default()
        };
    }

    /// Records a new request (its `seq` is assigned here) and counts it in flight.
    pub fn begin_request(self: &Arc<Self>, mut record: RequestRecord) -> RequestTracker {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        record.seq = inner.next_seq;
        inner.next_seq += 1;
        inner.records.push((id, record));
        inner.stats.requests_total += 1;
        inner.stats.in_flight += 1;
        inner.stats.peak_in_flight = inner.stats.peak_in_flight.max(inner.stats.in_flight);
        RequestTracker {
            state: Arc::clone(self),
            id,
            epoch: inner.epoch,
            completion_tokens: 0,
            finished: false,
        }
    }

    fn with_record(
        &self,
        id: u64,
        epoch: u64,
        update: impl FnOnce(&mut RequestRecord, &mut Stats),
    ) {
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        let Inner { records, stats, .. } = &mut *inner;
        if let Ok(index) = records.binary_search_by_key(&id, |(record_id, _)| *record_id) {
            update(&mut records[index].1, stats);
        }
    }
}

/// Follows one request from receipt to its end. Dropping it unfinished means the client
/// went away (hyper dropped the response body or the handler future): it is then
/// recorded as abandoned. It always leaves the in-flight count on drop.
#[derive(Debug)]
pub struct RequestTracker {
    state: Arc<SimState>,
    id: u64,
    epoch: u64,
    completion_tokens: u64,
    finished: bool,
}

impl RequestTracker {
    pub fn set_status(&self, status: u16) {
        self.state.with_record(self.id, self.epoch, |record, _| {
            record.status = Some(status)
        });
    }

    pub fn set_prompt_tokens(&self, tokens: u64) {
        self.state.with_record(self.id, self.epoch, |record, _| {
            record.prompt_tokens = Some(tokens)
        });
    }

    /// Counts completion tokens as they are sent.
    pub fn add_completion_tokens(&mut self, tokens: u64) {
        self.completion_tokens += tokens;
    }

    /// Ends the request with `outcome`; the drop that follows changes nothing else.
    pub fn finish(mut self, outcome: Outcome) {
        self.record_end(outcome);
    }

    fn record_end(&mut self, outcome: Outcome) {
        if self.finished {
            return;
        }
        self.finished = true;
        let completion_tokens = self.completion_tokens;
        self.state
            .with_record(self.id, self.epoch, |record, stats| {
                record.completion_tokens = completion_tokens;
                record.outcome = outcome;
                match outcome {
                    Outcome::Ok | Outcome::MidstreamError => {
                        record.completed = true;
                        stats.completed_total += 1;
                    }
                    Outcome::Abandoned => {
                        record.abandoned = true;
                        stats.abandoned_total += 1;
                    }
                    Outcome::Cut | Outcome::InFlight => {}
                }
            });
    }
}

impl Drop for RequestTracker {
    fn drop(&mut self) {
        self.record_end(Outcome::Abandoned);
        let mut inner = self.state.lock();
        inner.stats.in_flight = inner.stats.in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str) -> RequestRecord {
        RequestRecord::new(
            "r",
            path,
            RequestSummary::default(),
            None,
            BTreeMap::new(),
            RecordedBody::of(b"{}"),
        )
    }

    #[test]
    fn large_bodies_keep_only_their_length() {
        let big = vec![b'x'; RECORDED_BODY_LIMIT + 1];
        assert_eq!(
            RecordedBody::of(&big),
            RecordedBody {
                len: RECORDED_BODY_LIMIT + 1,
                text: None
            }
        );
        assert_eq!(RecordedBody::of(b"{}").text.as_deref(), Some("{}"));
    }

    #[test]
    fn tracks_in_flight_peak_completion_and_abandonment() {
        let state = SimState::new(Faults::default());
        let first = state.begin_request(record("/a"));
        let mut second = state.begin_request(record("/b"));
        assert_eq!(state.stats().in_flight, 2);
        second.add_completion_tokens(3);
        second.finish(Outcome::Ok);
        drop(first);
        let stats = state.stats();
        assert_eq!(
            stats,
            Stats {
                requests_total: 2,
                in_flight: 0,
                peak_in_flight: 2,
                abandoned_total: 1,
                completed_total: 1,
            }
        );
        let records = state.records();
        assert_eq!(records[0].seq, 1);
        assert!(records[0].abandoned && !records[0].completed);
        assert_eq!(records[1].completion_tokens, 3);
        assert!(records[1].completed);
    }

    #[test]
    fn reset_forgets_requests_but_not_what_is_still_running() {
        let state = SimState::new(Faults::default());
        let running = state.begin_request(record("/a"));
        state.reset();
        assert_eq!(state.stats().in_flight, 1);
        assert!(state.records().is_empty());
        drop(running);
        // It was still running after the reset, so it counts towards the new peak.
        let expected = Stats {
            peak_in_flight: 1,
            ..Stats::default()
        };
        assert_eq!(state.stats(), expected);
        let next = state.begin_request(record("/b"));
        assert_eq!(state.records()[0].seq, 1);
        next.finish(Outcome::Cut);
        assert_eq!(state.stats().completed_total, 0);
    }

    #[test]
    fn fail_next_counts_down() {
        let state = SimState::new(Faults {
            fail_next: 2,
            ..Faults::default()
        });
        assert!(state.take_fail_next());
        assert!(state.take_fail_next());
        assert!(!state.take_fail_next());
    }
}
