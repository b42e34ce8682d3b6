//! The bounded queue of writes made while the shared tier is unreachable. Writes leave it in the
//! order they were made, once the tier answers again; a full queue drops its oldest write (and
//! counts it): the newest state is the one worth keeping, and snapshot writes are versioned, so a
//! later one supersedes an earlier one anyway.
//!
//! A *durable* write (a per-user write already in the write-ahead log, `wal.rs`) is never dropped:
//! it was acknowledged to an evaluation. A full queue drops its oldest write that is not durable
//! instead, or, holding only durable ones, grows past its capacity: the log's size bound, which
//! refuses new per-user writes, bounds them.

use std::collections::VecDeque;

use crate::secret_url::RedactedUrl;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// One write, as it will be replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Snapshot {
        set: String,
        version: u64,
        json: String,
    },
    Publish {
        set: String,
        version: u64,
    },
    /// `epoch`: the writer's fencing token, checked when the write reaches Redis (also when it
    /// is replayed after an outage, by which time the shard may have a newer owner).
    PutUserState {
        shard: u32,
        epoch: u64,
        user: String,
        state: Vec<u8>,
    },
    DeleteUserState {
        shard: u32,
        epoch: u64,
        user: String,
    },
    /// The JSON list of running experiments, replacing the stored one.
    RunningExperiments {
        json: String,
    },
}

#[derive(Debug)]
pub struct WriteQueue {
    capacity: usize,
    endpoint: RedactedUrl,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    write: Write,
    durable: bool,
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Entry>,
    next_seq: u64,
}

impl WriteQueue {
    pub fn new(capacity: usize, endpoint: RedactedUrl) -> WriteQueue {
        let queue = WriteQueue {
            capacity: capacity.max(1),
            endpoint,
            inner: Mutex::new(Inner::default()),
        };
        queue.publish(0);
        queue
    }

    /// Queues `write`; `durable`: it is in the write-ahead log, so it is never dropped.
    pub fn push(&self, write: Write, durable: bool) {
        let mut inner = self.lock();
        let mut dropped = 0u64;
        while inner.items.len() >= self.capacity {
            let Some(oldest) = inner.items.iter().position(|e| !e.durable) else {
                break;
            };
            inner.items.remove(oldest);
            dropped += 1;
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.items.push_back(Entry {
            seq,
            write,
            durable,
        });
        let len = inner.items.len();
        drop(inner);
        if dropped > 0 {
            tracing::warn!(endpoint = %self.endpoint, capacity = self.capacity, "shared tier write queue full; dropped its oldest write");
            metrics::counter!("bunting_shared_tier_queue_dropped_total", "endpoint" => self.endpoint.as_str().to_owned())
                .increment(dropped);
        }
        self.publish(len);
    }

    /// The oldest write, left in place until [`WriteQueue::done`] says it was applied.
    pub fn front(&self) -> Option<(u64, Write)> {
        self.lock().items.front().map(|e| (e.seq, e.write.clone()))
    }

    /// Removes write `seq` if it is still at the front (a full queue may have dropped it
    /// meanwhile, and then the new front must stay). True if it removed a durable write, which
    /// the caller then marks replayed in the log.
    pub fn done(&self, seq: u64) -> bool {
        let mut inner = self.lock();
        let mut durable = false;
        if inner.items.front().is_some_and(|e| e.seq == seq) {
            durable = inner.items.pop_front().is_some_and(|e| e.durable);
        }
        let len = inner.items.len();
        drop(inner);
        self.publish(len);
        durable
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn publish(&self, len: usize) {
        metrics::gauge!("bunting_shared_tier_queued_writes", "endpoint" => self.endpoint.as_str().to_owned())
            .set(len as f64);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(version: u64) -> Write {
        Write::Publish {
            set: "s".to_owned(),
            version,
        }
    }

    #[test]
    fn keeps_order_and_drops_the_oldest_when_full() {
        let q = WriteQueue::new(2, RedactedUrl::new("test"));
        q.push(publish(1), false);
        q.push(publish(2), false);
        q.push(publish(3), false);
        assert_eq!(q.len(), 2);
        let (seq, first) = q.front().unwrap();
        assert_eq!(first, publish(2));
        q.done(seq);
        assert_eq!(q.front().unwrap().1, publish(3));
    }

    #[test]
    fn done_leaves_a_new_front_alone() {
        let q = WriteQueue::new(1, RedactedUrl::new("test"));
        q.push(publish(1), false);
        let (seq, _) = q.front().unwrap();
        q.push(publish(2), false);
        assert!(!q.done(seq));
        assert_eq!(q.front().unwrap().1, publish(2));
    }

    #[test]
    fn a_full_queue_never_drops_a_durable_write() {
        let q = WriteQueue::new(2, RedactedUrl::new("test"));
        q.push(publish(1), true);
        q.push(publish(2), false);
        q.push(publish(3), true);
        // The non-durable one went; the durable ones stay, in order.
        let (seq, first) = q.front().unwrap();
        assert_eq!(first, publish(1));
        q.push(publish(4), true);
        assert_eq!(
            q.len(),
            3,
            "only durable writes: the queue grows past its capacity"
        );
        assert!(q.done(seq));
        assert_eq!(q.front().unwrap().1, publish(3));
    }
}
