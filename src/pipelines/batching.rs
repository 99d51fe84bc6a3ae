//! The fixed-latency batching window, as a plain data structure (the `Batcher` actor drives it).
//!
//! A batch is sent when `max_batch` items are queued (`full`) or when the oldest item has waited
//! `max_delay` (`deadline`, measured from that item's enqueue: Triton's `max_queue_delay`).
//! Items of a failed batch come back to the front once; after a second failure each runs alone
//! (`isolated`), so one poisoned input cannot fail its batch-mates.
//!
//! Items carry a batch key (their input size, for models that take any size): a batch holds items
//! of one key only. It is full when `max_batch` items of a key wait; at the deadline of the oldest
//! item, the items of the oldest item's key go.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Failures after which an item is only run alone.
pub const ISOLATE_AFTER_FAILURES: u32 = 2;

#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub max_batch: usize,
    pub max_delay: Duration,
    /// Queued items (admission bound); requeued items of a failed batch are not counted against it.
    pub capacity: usize,
    /// Longest an item may wait for a worker (e.g. while none is alive) before it is given up.
    pub max_queue_wait: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendReason {
    Full,
    Deadline,
    Isolated,
}

impl SendReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Deadline => "deadline",
            Self::Isolated => "isolated",
        }
    }
}

#[derive(Debug)]
pub struct Queued<T> {
    pub item: T,
    /// Items batch only with items of the same key.
    pub key: u64,
    pub enqueued_at: Instant,
    /// Batches this item was part of that failed.
    pub failures: u32,
}

impl<T> Queued<T> {
    fn isolated(&self) -> bool {
        self.failures >= ISOLATE_AFTER_FAILURES
    }
}

#[derive(Debug)]
pub struct BatchQueue<T> {
    policy: BatchPolicy,
    items: VecDeque<Queued<T>>,
}

impl<T> BatchQueue<T> {
    pub fn new(policy: BatchPolicy) -> Self {
        Self { policy, items: VecDeque::with_capacity(policy.capacity) }
    }

    pub fn policy(&self) -> BatchPolicy {
        self.policy
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Queues an item (batch key 0); gives it back when the queue is at capacity.
    pub fn push(&mut self, item: T, now: Instant) -> Result<(), T> {
        self.push_keyed(item, 0, now)
    }

    /// Queues an item that batches only with items of the same `key`.
    pub fn push_keyed(&mut self, item: T, key: u64, now: Instant) -> Result<(), T> {
        if self.items.len() >= self.policy.capacity {
            return Err(item);
        }
        self.items.push_back(Queued { item, key, enqueued_at: now, failures: 0 });
        Ok(())
    }

    /// Puts the items of a failed batch back at the front, in their order, one failure more.
    pub fn requeue_failed(&mut self, batch: Vec<Queued<T>>) {
        for mut q in batch.into_iter().rev() {
            q.failures += 1;
            self.items.push_front(q);
        }
    }

    /// Drops items the caller no longer wants (e.g. the client went away); returns how many.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) -> usize {
        let before = self.items.len();
        self.items.retain(|q| keep(&q.item));
        before - self.items.len()
    }

    /// Removes and returns the items that have waited `max_queue_wait` or longer.
    pub fn expire(&mut self, now: Instant) -> Vec<Queued<T>> {
        let max = self.policy.max_queue_wait;
        let (expired, kept): (Vec<_>, Vec<_>) = self.items.drain(..).partition(|q| now >= q.enqueued_at + max);
        self.items = kept.into();
        expired
    }

    /// When the oldest item will have waited `max_queue_wait`.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.items.iter().map(|q| q.enqueued_at).min().map(|t| t + self.policy.max_queue_wait)
    }

    /// When the next batch is due if nothing else arrives.
    pub fn deadline(&self) -> Option<Instant> {
        let front = self.items.front()?;
        if front.isolated() { Some(front.enqueued_at) } else { Some(front.enqueued_at + self.policy.max_delay) }
    }

    /// The batch to send now, if one is due.
    pub fn next_batch(&mut self, now: Instant) -> Option<(Vec<Queued<T>>, SendReason)> {
        let front = self.items.front()?;
        if front.isolated() {
            return self.items.pop_front().map(|q| (vec![q], SendReason::Isolated));
        }
        let max = self.policy.max_batch;
        // The first key (in queue order) with a full batch waiting, else the oldest item's key
        // once that item has waited `max_delay`.
        let mut counts: Vec<(u64, usize)> = Vec::new();
        let mut full = None;
        for q in self.items.iter().filter(|q| !q.isolated()) {
            let n = match counts.iter_mut().find(|(k, _)| *k == q.key) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    counts.push((q.key, 1));
                    1
                }
            };
            if n == max {
                full = Some(q.key);
                break;
            }
        }
        let (key, reason) = match full {
            Some(key) => (key, SendReason::Full),
            None if now >= front.enqueued_at + self.policy.max_delay => (front.key, SendReason::Deadline),
            None => return None,
        };
        let mut batch = Vec::with_capacity(max);
        let mut rest = VecDeque::with_capacity(self.items.len());
        for q in self.items.drain(..) {
            if batch.len() < max && q.key == key && !q.isolated() {
                batch.push(q);
            } else {
                rest.push_back(q);
            }
        }
        self.items = rest;
        Some((batch, reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(max_batch: usize, capacity: usize) -> BatchQueue<u32> {
        BatchQueue::new(BatchPolicy {
            max_batch,
            max_delay: Duration::from_millis(50),
            capacity,
            max_queue_wait: Duration::from_secs(30),
        })
    }

    fn items(b: &[Queued<u32>]) -> Vec<u32> {
        b.iter().map(|q| q.item).collect()
    }

    #[test]
    fn sends_when_full_without_waiting() {
        let t0 = Instant::now();
        let mut q = queue(3, 10);
        for i in 0..4 {
            q.push(i, t0).unwrap();
        }
        let (b, r) = q.next_batch(t0).unwrap();
        assert_eq!((items(&b), r), (vec![0, 1, 2], SendReason::Full));
        assert!(q.next_batch(t0).is_none(), "one item left, deadline not reached");
    }

    #[test]
    fn deadline_is_measured_from_the_oldest_item() {
        let t0 = Instant::now();
        let mut q = queue(8, 10);
        q.push(1, t0).unwrap();
        q.push(2, t0 + Duration::from_millis(40)).unwrap();
        assert_eq!(q.deadline(), Some(t0 + Duration::from_millis(50)));
        assert!(q.next_batch(t0 + Duration::from_millis(49)).is_none());
        let (b, r) = q.next_batch(t0 + Duration::from_millis(50)).unwrap();
        assert_eq!((items(&b), r), (vec![1, 2], SendReason::Deadline));
        assert!(q.is_empty() && q.deadline().is_none());
    }

    #[test]
    fn refuses_beyond_capacity() {
        let t0 = Instant::now();
        let mut q = queue(2, 2);
        q.push(1, t0).unwrap();
        q.push(2, t0).unwrap();
        assert_eq!(q.push(3, t0), Err(3));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn failed_batch_is_retried_once_then_isolated() {
        let t0 = Instant::now();
        let mut q = queue(3, 10);
        for i in 0..3 {
            q.push(i, t0).unwrap();
        }
        let (b, _) = q.next_batch(t0).unwrap();
        q.requeue_failed(b);
        // Retried together, at once.
        let (b, r) = q.next_batch(t0).unwrap();
        assert_eq!((items(&b), r), (vec![0, 1, 2], SendReason::Full));
        q.requeue_failed(b);
        // Second failure: each alone, due at once.
        assert_eq!(q.deadline(), Some(t0));
        for want in 0..3 {
            let (b, r) = q.next_batch(t0).unwrap();
            assert_eq!((items(&b), r), (vec![want], SendReason::Isolated));
            assert_eq!(b[0].failures, 2);
        }
    }

    #[test]
    fn fresh_items_do_not_join_an_isolated_run() {
        let t0 = Instant::now();
        let mut q = queue(4, 10);
        q.push(7, t0).unwrap();
        let (b, _) = q.next_batch(t0 + Duration::from_millis(50)).unwrap();
        q.requeue_failed(b);
        let (b, _) = q.next_batch(t0 + Duration::from_millis(50)).unwrap();
        q.requeue_failed(b);
        q.push(8, t0).unwrap();
        q.push(9, t0).unwrap();
        assert_eq!(items(&q.next_batch(t0).unwrap().0), vec![7]);
        assert_eq!(items(&q.next_batch(t0 + Duration::from_millis(50)).unwrap().0), vec![8, 9]);
    }

    #[test]
    fn items_waiting_too_long_expire() {
        let t0 = Instant::now();
        let mut q = queue(4, 10);
        q.push(1, t0).unwrap();
        q.push(2, t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(q.next_expiry(), Some(t0 + Duration::from_secs(30)));
        assert!(q.expire(t0 + Duration::from_secs(29)).is_empty());
        assert_eq!(items(&q.expire(t0 + Duration::from_secs(30))), vec![1]);
        assert_eq!(q.next_expiry(), Some(t0 + Duration::from_secs(40)));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn batches_hold_one_key() {
        let t0 = Instant::now();
        let mut q = queue(2, 10);
        q.push_keyed(1, 7, t0).unwrap();
        q.push_keyed(2, 8, t0).unwrap();
        q.push_keyed(3, 8, t0).unwrap();
        q.push_keyed(4, 7, t0).unwrap();
        // Key 8 fills first (items 2, 3), then key 7 (1, 4): each batch one size.
        let (b, r) = q.next_batch(t0).unwrap();
        assert_eq!((items(&b), r), (vec![2, 3], SendReason::Full));
        let (b, r) = q.next_batch(t0).unwrap();
        assert_eq!((items(&b), r), (vec![1, 4], SendReason::Full));
        // At the deadline only the oldest item's key goes.
        q.push_keyed(5, 1, t0).unwrap();
        q.push_keyed(6, 2, t0).unwrap();
        let later = t0 + Duration::from_millis(50);
        assert_eq!(items(&q.next_batch(later).unwrap().0), vec![5]);
        assert_eq!(items(&q.next_batch(later).unwrap().0), vec![6]);
    }

    #[test]
    fn retain_drops_abandoned_items() {
        let t0 = Instant::now();
        let mut q = queue(4, 10);
        for i in 0..4 {
            q.push(i, t0).unwrap();
        }
        assert_eq!(q.retain(|i| i % 2 == 0), 2);
        assert_eq!(items(&q.next_batch(t0 + Duration::from_secs(1)).unwrap().0), vec![0, 2]);
    }
}
