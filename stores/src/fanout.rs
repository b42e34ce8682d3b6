//! Notices to in-process subscribers, each behind a bounded buffer: the memory stores' stand-in
//! for PostgreSQL's LISTEN and Redis's PUBLISH. A subscriber that falls behind misses notices and
//! is sent the resync notice once there is room again (as a real listener announces a reconnect),
//! so memory stays bounded and nothing is lost silently. Subscribers that hung up are dropped.

use tokio::sync::mpsc;

#[derive(Debug)]
pub(crate) struct Fanout<N> {
    subscribers: Vec<Subscriber<N>>,
    /// What a subscriber that missed notices hears before the next one.
    resync: N,
}

#[derive(Debug)]
struct Subscriber<N> {
    notices: mpsc::Sender<N>,
    missed: bool,
}

impl<N: Clone> Fanout<N> {
    pub(crate) fn new(resync: N) -> Fanout<N> {
        Fanout {
            subscribers: Vec::new(),
            resync,
        }
    }

    /// A new subscriber with room for `capacity` notices; with `resync_first` it hears the resync
    /// notice at once (a Redis subscription announces each connection so).
    pub(crate) fn subscribe(&mut self, capacity: usize, resync_first: bool) -> mpsc::Receiver<N> {
        let (notices, receiver) = mpsc::channel(capacity);
        let missed = resync_first && notices.try_send(self.resync.clone()).is_err();
        self.subscribers.push(Subscriber { notices, missed });
        receiver
    }

    pub(crate) fn send(&mut self, notice: &N) {
        let resync = &self.resync;
        self.subscribers.retain_mut(|subscriber| {
            if subscriber.missed {
                match subscriber.notices.try_send(resync.clone()) {
                    Ok(()) => subscriber.missed = false,
                    Err(mpsc::error::TrySendError::Full(_)) => return true,
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            match subscriber.notices.try_send(notice.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    subscriber.missed = true;
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
}
