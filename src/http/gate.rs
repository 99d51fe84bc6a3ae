//! The gate in front of each Vision endpoint: how many requests are read and worked on at once,
//! and what the others do meanwhile (`[admission]`, README "Faults and overload").
//!
//! Why: under overload with retrying clients, refusing at once is cheap per request but the
//! refusals come straight back and eat the cores the answers need (measured: 512 closed-loop
//! connections against a 2-core server got 20 answers/s and ~6,000 refusals/s), and a long model
//! queue makes every answered request slow. So:
//! - at most `max_active_requests` requests of an endpoint run at once; a request beyond waits
//!   before its body is read (it costs a task and its headers, no CPU);
//! - a slot that frees goes to the longest-waiting request while the wait is short, and to the
//!   newest once the oldest has waited half of `max_wait_ms` (adaptive LIFO): under sustained
//!   overload the answered requests keep a short wait and the excess times out instead of every
//!   answer waiting the longest;
//! - a request that waited `max_wait_ms`, or finds `max_waiting_requests` already waiting, is
//!   refused (503 with `Retry-After`; its body is read and dropped, never parsed): a retrying
//!   client comes back at most once per `max_wait_ms` instead of at once.
//!
//! The gate is entered after the auth check, where the upload is about to be read
//! (`multipart::read_upload`); the slot lives in the request's extensions until its answer is sent.
//!

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::AdmissionConfig;
use crate::metrics;

/// Who gets a freed slot among the waiters (their arrival times, oldest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Oldest,
    Newest,
}

/// First come first served while the oldest waiter has waited less than `lifo_after`; newest
/// first beyond.
pub fn pick(oldest_since: Instant, now: Instant, lifo_after: Duration) -> Pick {
    if now.saturating_duration_since(oldest_since) < lifo_after { Pick::Oldest } else { Pick::Newest }
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_waiting_requests` were already waiting.
    QueueFull,
    /// No slot freed within `max_wait_ms`.
    Timeout,
}

impl Refusal {
    /// `gpubackend_refusals_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::QueueFull => "gate_full",
            Self::Timeout => "gate_timeout",
        }
    }

    /// The refusal's words in the envelope.
    pub fn message(self, endpoint: &str) -> String {
        match self {
            Self::QueueFull => format!("server overloaded: too many requests waiting for {endpoint}, retry later"),
            Self::Timeout => format!("server overloaded: no room for {endpoint} in time, retry later"),
        }
    }
}

struct Waiter {
    since: Instant,
    /// The slot is handed over through the channel: dropped unreceived (the request went away
    /// just then), it frees itself again.
    slot: oneshot::Sender<Slot>,
}

/// An endpoint's slots and waiters.
struct Queue {
    active: usize,
    waiters: VecDeque<Waiter>,
}

/// One endpoint's gate.
pub struct Gate {
    endpoint: &'static str,
    config: AdmissionConfig,
    queue: Mutex<Queue>,
}

/// A slot held by a request; freed (and handed to a waiter) when dropped.
pub struct Slot {
    gate: Option<Arc<Gate>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take() {
            gate.release();
        }
    }
}

impl Gate {
    pub fn new(endpoint: &'static str, config: AdmissionConfig) -> Arc<Self> {
        ::metrics::gauge!(metrics::GATE_ACTIVE, "endpoint" => endpoint).set(0.0);
        ::metrics::gauge!(metrics::GATE_WAITING, "endpoint" => endpoint).set(0.0);
        Arc::new(Self { endpoint, config, queue: Mutex::new(Queue { active: 0, waiters: VecDeque::new() }) })
    }

    /// The `endpoint` label of its metrics.
    pub fn endpoint(&self) -> &'static str {
        self.endpoint
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn max_wait(&self) -> Duration {
        Duration::from_millis(self.config.max_wait_ms)
    }

    fn gauges(&self, q: &Queue) {
        ::metrics::gauge!(metrics::GATE_ACTIVE, "endpoint" => self.endpoint).set(q.active as f64);
        ::metrics::gauge!(metrics::GATE_WAITING, "endpoint" => self.endpoint).set(q.waiters.len() as f64);
    }

    /// A slot now, or after waiting (at most `max_wait_ms`), or the refusal.
    pub async fn enter(self: &Arc<Self>) -> Result<Slot, Refusal> {
        let mut rx = {
            let mut q = self.lock();
            if q.active < self.config.max_active_requests && q.waiters.is_empty() {
                q.active += 1;
                self.gauges(&q);
                return Ok(Slot { gate: Some(self.clone()) });
            }
            // Waiters that gave up are dropped from the count before it is compared.
            q.waiters.retain(|w| !w.slot.is_closed());
            if q.waiters.len() >= self.config.max_waiting_requests {
                return Err(Refusal::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            q.waiters.push_back(Waiter { since: Instant::now(), slot: tx });
            self.gauges(&q);
            rx
        };
        tokio::select! {
            slot = &mut rx => return slot.map_err(|_| Refusal::Timeout),
            () = tokio::time::sleep(self.max_wait()) => {}
        }
        // No slot can be handed over from here on; one handed just before is ours.
        rx.close();
        if let Ok(slot) = rx.try_recv() {
            return Ok(slot);
        }
        let mut q = self.lock();
        q.waiters.retain(|w| !w.slot.is_closed());
        self.gauges(&q);
        Err(Refusal::Timeout)
    }

    /// A slot freed: handed to a waiter (see [`pick`]) or counted free.
    fn release(self: Arc<Self>) {
        let mut q = self.lock();
        let now = Instant::now();
        let lifo_after = self.max_wait() / 2;
        loop {
            let next = match q.waiters.front().map(|w| pick(w.since, now, lifo_after)) {
                None => break,
                Some(Pick::Oldest) => q.waiters.pop_front(),
                Some(Pick::Newest) => q.waiters.pop_back(),
            };
            let Some(w) = next else { break };
            match w.slot.send(Slot { gate: Some(self.clone()) }) {
                // The slot moves to the waiter: `active` stays.
                Ok(()) => {
                    self.gauges(&q);
                    return;
                }
                // That waiter is gone: the slot comes back unused (not freed twice).
                Err(mut unused) => drop(unused.gate.take()),
            }
        }
        q.active -= 1;
        self.gauges(&q);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(active: usize, waiting: usize, wait_ms: u64) -> AdmissionConfig {
        AdmissionConfig { max_active_requests: active, max_waiting_requests: waiting, max_wait_ms: wait_ms }
    }

    #[test]
    fn a_short_wait_is_first_come_first_served_and_a_long_one_newest_first() {
        let t0 = Instant::now();
        let half = Duration::from_millis(500);
        assert_eq!(pick(t0, t0 + Duration::from_millis(499), half), Pick::Oldest);
        assert_eq!(pick(t0, t0 + half, half), Pick::Newest);
    }

    #[tokio::test]
    async fn slots_are_held_until_dropped_and_then_handed_to_a_waiter() {
        let gate = Gate::new("test", config(2, 8, 60_000));
        let a = gate.enter().await.unwrap();
        let _b = gate.enter().await.unwrap();
        // The third waits until a slot frees.
        let g = gate.clone();
        let third = tokio::spawn(async move { g.enter().await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        drop(a);
        assert_eq!(third.await.unwrap(), Ok(()));
        // Its slot went back when it ended: one active (`_b`), one free.
        let _c = gate.enter().await.unwrap();
        assert_eq!(gate.lock().active, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_waits_too_long_or_finds_the_queue_full_is_refused() {
        let gate = Gate::new("test", config(1, 1, 1000));
        let _a = gate.enter().await.unwrap();
        let g = gate.clone();
        let waiting = tokio::spawn(async move { g.enter().await.map(|_| ()) });
        tokio::task::yield_now().await;
        // One already waits: the next is refused at once.
        assert_eq!(gate.enter().await.map(|_| ()), Err(Refusal::QueueFull));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(waiting.await.unwrap(), Err(Refusal::Timeout));
        // The queue is free again.
        assert!(gate.lock().waiters.is_empty());
    }

    #[tokio::test]
    async fn under_a_standing_queue_the_newest_waiter_gets_the_slot() {
        let gate = Gate::new("test", config(1, 8, 200));
        let a = gate.enter().await.unwrap();
        let g = gate.clone();
        let old = tokio::spawn(async move { g.enter().await.map(|_| Instant::now()) });
        // The oldest has waited past half of max_wait when the newest arrives and the slot frees.
        tokio::time::sleep(Duration::from_millis(120)).await;
        let g = gate.clone();
        let new = tokio::spawn(async move { g.enter().await.map(|s| (Instant::now(), s)) });
        tokio::task::yield_now().await;
        drop(a);
        let (_, slot) = new.await.unwrap().expect("the newest is let in");
        // The old one is refused when its wait ends (the newest holds the only slot).
        assert_eq!(old.await.unwrap().map(|_| ()), Err(Refusal::Timeout));
        drop(slot);
        assert_eq!(gate.lock().active, 0);
    }
}
