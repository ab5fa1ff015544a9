//! Write acknowledgements (DESIGN §7): a write asked with `?w=N` is
//! answered once N nodes, this one included, hold its versions durably.
//!
//! A write announces the keys it will write (`expect`) before it goes to
//! the writer, so that no acknowledgement is missed between the commit
//! and the moment the write learns its versions (`arm`). A peer counts
//! once a push carrying every one of the write's versions returned `200`
//! from it (its own commit done; a newer version it already held counts
//! too). The write's answer is given on one of this module's threads,
//! never on a sender's (a slow client must not hold up replication) nor on
//! a request-handling one: a waiting write holds nothing but its own
//! connection. Past its deadline it is answered as timed out; the write
//! stays and keeps replicating.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::store::VersionId;

/// How many nodes a write waits for (`?w=`, `write_acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// This many nodes, this one included (1: no wait).
    Nodes(usize),
    /// A majority of all known members.
    Quorum,
    /// Every healthy member.
    All,
}

impl Wanted {
    pub fn parse(text: &str) -> Result<Wanted, String> {
        match text {
            "quorum" => Ok(Wanted::Quorum),
            "all" => Ok(Wanted::All),
            n => match n.parse::<usize>() {
                Ok(n) if (1..=100_000).contains(&n) => Ok(Wanted::Nodes(n)),
                _ => Err(format!(
                    "w must be a number of nodes (1 or more), quorum or all, not {n:?}"
                )),
            },
        }
    }

    /// The nodes wanted, given the members known (this one included) and
    /// those healthy now.
    pub fn nodes(self, members: usize, healthy: usize) -> usize {
        match self {
            Wanted::Nodes(n) => n,
            Wanted::Quorum => members / 2 + 1,
            Wanted::All => healthy,
        }
    }
}

/// How a waiting write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Nodes holding every version of the write, this one included.
    pub acks: usize,
    /// False when W was not reached by the deadline.
    pub reached: bool,
    /// How long it waited.
    pub waited: Duration,
}

type Reply = Box<dyn FnOnce(Outcome) + Send>;

/// A write that waits for acknowledgements.
struct Waiter {
    keys: Vec<String>,
    armed: Option<Armed>,
}

struct Armed {
    /// The write's versions, by key.
    versions: HashMap<String, VersionId>,
    /// Peers that acknowledged each number of the versions.
    per_peer: HashMap<String, usize>,
    /// Peers that hold every version.
    full: usize,
    /// Nodes wanted, this one included.
    wanted: usize,
    started: Instant,
    deadline: Instant,
    reply: Reply,
}

/// Acknowledgements seen for a key some waiter is interested in.
#[derive(Default)]
struct Interest {
    waiters: Vec<u64>,
    seen: HashSet<(VersionId, String)>,
}

#[derive(Default)]
struct State {
    next: u64,
    interest: HashMap<String, Interest>,
    waiters: HashMap<u64, Waiter>,
}

/// Waiting writes and the acknowledgements they wait for.
pub struct Acks {
    state: Mutex<State>,
    /// The timer thread waits on it for the next deadline.
    wake: Condvar,
    /// Waiters registered: when none, a push does not touch the lock.
    waiting: AtomicUsize,
    /// Answers to give, to the answering threads.
    answers: OnceLock<Mutex<mpsc::Sender<(Reply, Outcome)>>>,
    this: std::sync::Weak<Acks>,
}

/// Answering threads: a slow client holds one of them for at most its
/// response deadline.
const ANSWER_THREADS: usize = 2;

/// A write's place among the waiters, taken before it is submitted;
/// dropped without `arm` (the write failed), it is withdrawn.
pub struct Ticket {
    acks: Arc<Acks>,
    id: u64,
    armed: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.armed {
            self.acks.withdraw(self.id);
        }
    }
}

impl Acks {
    pub fn new() -> Arc<Acks> {
        Arc::new_cyclic(|this| Acks {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            waiting: AtomicUsize::new(0),
            answers: OnceLock::new(),
            this: this.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Announces a write of `keys`, before it is submitted.
    pub fn expect(self: &Arc<Self>, keys: Vec<String>) -> Ticket {
        let mut s = self.lock();
        s.next += 1;
        let id = s.next;
        for k in &keys {
            s.interest.entry(k.clone()).or_default().waiters.push(id);
        }
        s.waiters.insert(id, Waiter { keys, armed: None });
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Ticket {
            acks: self.clone(),
            id,
            armed: false,
        }
    }

    /// The write committed `versions`: answer through `reply` once
    /// `wanted` nodes (this one included) hold them all, or at `timeout`.
    pub fn arm(
        &self,
        mut ticket: Ticket,
        versions: Vec<(String, VersionId)>,
        wanted: usize,
        timeout: Duration,
        reply: impl FnOnce(Outcome) + Send + 'static,
    ) {
        ticket.armed = true;
        let now = Instant::now();
        let mut armed = Armed {
            versions: versions.into_iter().collect(),
            per_peer: HashMap::new(),
            full: 0,
            wanted,
            started: now,
            deadline: now + timeout,
            reply: Box::new(reply),
        };
        let done = {
            let mut s = self.lock();
            // Acknowledgements that came before the write knew its versions.
            let mut early = Vec::new();
            for (key, uuid) in &armed.versions {
                if let Some(i) = s.interest.get(key) {
                    early.extend(
                        i.seen
                            .iter()
                            .filter(|(seen, _)| seen == uuid)
                            .map(|(_, peer)| peer.clone()),
                    );
                }
            }
            for peer in early {
                count(&mut armed, &peer);
            }
            if armed.full + 1 >= armed.wanted || armed.versions.is_empty() {
                self.finish(&mut s, ticket.id, Some(armed), true)
            } else {
                match s.waiters.get_mut(&ticket.id) {
                    Some(w) => {
                        w.armed = Some(armed);
                        None
                    }
                    // Not registered (cannot happen: the ticket is
                    // withdrawn only unarmed): answer now rather than never.
                    None => {
                        let outcome = Outcome {
                            acks: armed.full + 1,
                            reached: false,
                            waited: Duration::ZERO,
                        };
                        Some((armed.reply, outcome))
                    }
                }
            }
        };
        self.ensure_threads();
        self.wake.notify_all();
        if let Some(answer) = done {
            self.answer(answer);
        }
    }

    /// `peer` acknowledged these versions (a push to it returned 200).
    pub fn acked<'a>(&self, peer: &str, versions: impl Iterator<Item = (&'a str, VersionId)>) {
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut done = Vec::new();
        {
            let mut s = self.lock();
            let mut complete = Vec::new();
            for (key, uuid) in versions {
                let Some(interest) = s.interest.get_mut(key) else {
                    continue;
                };
                if !interest.seen.insert((uuid, peer.to_string())) {
                    continue;
                }
                let ids = interest.waiters.clone();
                for id in ids {
                    let Some(Waiter { armed: Some(a), .. }) = s.waiters.get_mut(&id) else {
                        continue;
                    };
                    if a.versions.get(key) == Some(&uuid) {
                        count(a, peer);
                        if a.full + 1 >= a.wanted {
                            complete.push(id);
                        }
                    }
                }
            }
            complete.sort_unstable();
            complete.dedup();
            for id in complete {
                if let Some(answer) = self.finish(&mut s, id, None, true) {
                    done.push(answer);
                }
            }
        }
        for answer in done {
            self.answer(answer);
        }
    }

    /// A write that was announced but not made.
    fn withdraw(&self, id: u64) {
        let mut s = self.lock();
        let _ = self.finish(&mut s, id, None, false);
    }

    /// Removes a waiter; returns its answer when it was armed.
    fn finish(
        &self,
        s: &mut State,
        id: u64,
        armed: Option<Armed>,
        reached: bool,
    ) -> Option<(Reply, Outcome)> {
        let waiter = s.waiters.remove(&id)?;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        for k in &waiter.keys {
            if let Some(i) = s.interest.get_mut(k) {
                i.waiters.retain(|w| *w != id);
                if i.waiters.is_empty() {
                    s.interest.remove(k);
                }
            }
        }
        let a = armed.or(waiter.armed)?;
        let outcome = Outcome {
            acks: a.full + 1,
            reached,
            waited: a.started.elapsed(),
        };
        Some((a.reply, outcome))
    }

    fn answer(&self, answer: (Reply, Outcome)) {
        let sent = self
            .answers
            .get()
            .map(|tx| tx.lock().unwrap_or_else(|e| e.into_inner()).send(answer));
        match sent {
            Some(Ok(())) => {}
            // No answering thread: answer here rather than never.
            Some(Err(mpsc::SendError(answer))) => (answer.0)(answer.1),
            None => {}
        }
    }

    /// Starts the timer and the answering threads on first use.
    fn ensure_threads(&self) {
        if self.answers.get().is_some() {
            return;
        }
        let (tx, rx) = mpsc::channel::<(Reply, Outcome)>();
        if self.answers.set(Mutex::new(tx)).is_err() {
            return;
        }
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..ANSWER_THREADS {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("acks-answer-{i}"))
                .spawn(move || loop {
                    let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match next {
                        Ok((reply, outcome)) => reply(outcome),
                        Err(_) => return,
                    }
                });
            if let Err(e) = spawned {
                log::error!("cannot start a write-acknowledgement thread: {e}");
            }
        }
        let weak = self.this.clone();
        let spawned = std::thread::Builder::new()
            .name("acks-timer".into())
            .spawn(move || timer_loop(&weak));
        if let Err(e) = spawned {
            log::error!("cannot start the write-acknowledgement timer: {e}");
        }
    }
}

fn count(a: &mut Armed, peer: &str) {
    let n = a.per_peer.entry(peer.to_string()).or_insert(0);
    *n += 1;
    if *n == a.versions.len() {
        a.full += 1;
    }
}

/// Answers the waiters whose deadline passed.
fn timer_loop(acks: &std::sync::Weak<Acks>) {
    loop {
        let Some(acks) = acks.upgrade() else { return };
        let mut expired = Vec::new();
        {
            let mut s = acks.lock();
            let now = Instant::now();
            let due: Vec<u64> = s
                .waiters
                .iter()
                .filter_map(|(id, w)| w.armed.as_ref().filter(|a| a.deadline <= now).map(|_| *id))
                .collect();
            for id in due {
                if let Some(answer) = acks.finish(&mut s, id, None, false) {
                    expired.push(answer);
                }
            }
            if expired.is_empty() {
                let next = s
                    .waiters
                    .values()
                    .filter_map(|w| w.armed.as_ref().map(|a| a.deadline))
                    .min();
                let wait = next.map_or(Duration::from_secs(1), |d| {
                    d.saturating_duration_since(now)
                        .max(Duration::from_millis(1))
                });
                let _ = acks.wake.wait_timeout(s, wait);
                continue;
            }
        }
        for answer in expired {
            acks.answer(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid(n: u8) -> VersionId {
        VersionId([n; 16])
    }

    fn recorder() -> (
        impl FnOnce(Outcome) + Send + 'static,
        mpsc::Receiver<Outcome>,
    ) {
        let (tx, rx) = mpsc::channel();
        (
            move |o| {
                let _ = tx.send(o);
            },
            rx,
        )
    }

    #[test]
    fn answered_once_enough_peers_hold_every_version() {
        let acks = Acks::new();
        let t = acks.expect(vec!["a".into(), "b".into()]);
        // An acknowledgement before the write knows its versions counts.
        acks.acked("p1", [("a", uuid(1))].into_iter());
        let (reply, rx) = recorder();
        acks.arm(
            t,
            vec![("a".into(), uuid(1)), ("b".into(), uuid(2))],
            3,
            Duration::from_secs(5),
            reply,
        );
        acks.acked("p1", [("b", uuid(2))].into_iter());
        assert!(rx.try_recv().is_err(), "2 of 3 nodes");
        // Another version of the key does not count.
        acks.acked("p2", [("a", uuid(9)), ("b", uuid(2))].into_iter());
        assert!(rx.try_recv().is_err());
        acks.acked("p2", [("a", uuid(1))].into_iter());
        let o = rx.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!((o.acks, o.reached), (3, true));
        assert_eq!(acks.waiting(), 0);
        assert!(acks.lock().interest.is_empty());
    }

    #[test]
    fn the_deadline_answers_with_the_acks_reached() {
        let acks = Acks::new();
        let t = acks.expect(vec!["k".into()]);
        let (reply, rx) = recorder();
        acks.arm(
            t,
            vec![("k".into(), uuid(1))],
            3,
            Duration::from_millis(100),
            reply,
        );
        acks.acked("p1", [("k", uuid(1))].into_iter());
        let o = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!((o.acks, o.reached), (2, false));
        assert!(o.waited >= Duration::from_millis(100));
        assert_eq!(acks.waiting(), 0);
    }

    #[test]
    fn w_is_a_count_quorum_or_all() {
        assert_eq!(Wanted::parse("2"), Ok(Wanted::Nodes(2)));
        assert_eq!(Wanted::parse("quorum").unwrap().nodes(5, 2), 3);
        assert_eq!(Wanted::parse("quorum").unwrap().nodes(4, 4), 3);
        assert_eq!(Wanted::parse("all").unwrap().nodes(5, 4), 4);
        for bad in ["0", "-1", "two", "", "1.5"] {
            assert!(Wanted::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_withdrawn_write_leaves_nothing() {
        let acks = Acks::new();
        drop(acks.expect(vec!["k".into()]));
        assert_eq!(acks.waiting(), 0);
        assert!(acks.lock().interest.is_empty());
        acks.acked("p1", [("k", uuid(1))].into_iter());
        assert!(acks.lock().interest.is_empty());
    }
}
