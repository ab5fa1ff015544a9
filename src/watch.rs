//! Changes as they commit: the history behind `?changes` and the parked
//! requests of blocking queries (`?index=N&wait=D`).
//!
//! - The writer records every committed version: its key and its commit
//!   index. The last `HISTORY` of them stay in a ring in memory (about
//!   64 bytes each plus the key); what is older, or from before this
//!   process started, is gone: a changes request that starts before the
//!   ring answers `410` with the current index.
//! - A blocking request whose answer has not changed since its index is
//!   parked here, holding no HTTP worker: the request itself waits in a
//!   list. One watch thread wakes after each commit, finds the parked
//!   requests whose key or prefix the new changes touch (and those whose
//!   wait ran out), and hands them to a few answer threads, which run the
//!   query again and respond.
//! - Parked requests are bounded (`MAX_PARKED`); beyond it a blocking
//!   request is answered at once, as if it had not asked to wait.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Changes kept in memory for `?changes` and blocking queries.
pub const HISTORY: usize = 100_000;
/// Blocking requests parked at most.
pub const MAX_PARKED: usize = 4096;
/// Threads that answer woken requests.
const ANSWER_THREADS: usize = 2;
/// The default wait of a blocking query, and the longest.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// What a request watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Key(String),
    Prefix(String),
}

impl Scope {
    fn covers(&self, key: &str) -> bool {
        match self {
            Scope::Key(k) => k == key,
            Scope::Prefix(p) => key.starts_with(p.as_str()),
        }
    }

    /// Whether any of `keys` is in the scope (a lookup for a key, a scan
    /// for a prefix).
    fn touched_by(&self, keys: &HashSet<Arc<str>>) -> bool {
        match self {
            Scope::Key(k) => keys.contains(k.as_str()),
            Scope::Prefix(_) => keys.iter().any(|k| self.covers(k)),
        }
    }
}

/// Answers a parked request (runs the query again and responds), given
/// the context `C` the answer threads hold (the node, for the HTTP layer).
pub type Job<C> = Box<dyn FnOnce(&C) + Send>;

struct Parked<C> {
    scope: Scope,
    deadline: Instant,
    job: Job<C>,
}

struct Inner<C> {
    /// Recent changes, oldest first: (commit index, key).
    ring: VecDeque<(u64, Arc<str>)>,
    /// Every change with an index above this is in the ring.
    floor: u64,
    /// The newest commit index.
    index: u64,
    /// Changes up to this index have been matched against `parked`.
    matched: u64,
    parked: Vec<Parked<C>>,
    /// The watch thread holds the parked list, matching it.
    matching: bool,
    stopping: bool,
}

/// The changes history and the parked requests.
pub struct Watch<C> {
    inner: Mutex<Inner<C>>,
    wake: Condvar,
}

/// The history does not reach back to the index asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct Gone {
    pub current: u64,
}

/// A page of changes: each key once, at its newest change in the page,
/// in index order; and the index to ask from next.
#[derive(Debug, PartialEq, Eq)]
pub struct Changes {
    pub keys: Vec<(u64, Arc<str>)>,
    pub next: u64,
}

impl<C> Watch<C> {
    /// A history that starts at `index` (this node's commit index now).
    pub fn new(index: u64) -> Watch<C> {
        Watch {
            inner: Mutex::new(Inner {
                ring: VecDeque::new(),
                floor: index,
                index,
                matched: index,
                parked: Vec::new(),
                matching: false,
                stopping: false,
            }),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<C>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest commit index.
    #[cfg(test)]
    pub fn index(&self) -> u64 {
        self.lock().index
    }

    /// Records a commit: `keys` got new versions, the last of them with
    /// index `last` (the writer calls this, in commit order).
    pub fn record(&self, last: u64, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let first = last + 1 - keys.len() as u64;
        for (i, key) in keys.iter().enumerate() {
            inner
                .ring
                .push_back((first + i as u64, Arc::from(key.as_str())));
        }
        while inner.ring.len() > HISTORY {
            if let Some((index, _)) = inner.ring.pop_front() {
                inner.floor = index;
            }
        }
        inner.index = last;
        let anyone = !inner.parked.is_empty();
        drop(inner);
        if anyone {
            self.wake.notify_all();
        }
    }

    /// Whether anything in `scope` changed after `after`; `Err` when the
    /// history does not reach back that far.
    #[cfg(test)]
    pub fn changed_since(&self, scope: &Scope, after: u64) -> Result<bool, Gone> {
        changed_since(&self.lock(), scope, after)
    }

    /// Changes in `scope` after `after`, at most `limit` keys.
    pub fn changes(&self, scope: &Scope, after: u64, limit: usize) -> Result<Changes, Gone> {
        let inner = self.lock();
        if after < inner.floor {
            return Err(Gone {
                current: inner.index,
            });
        }
        let start = inner.ring.partition_point(|(i, _)| *i <= after);
        // key -> newest index, and the order keys were first seen in.
        let mut newest: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        let mut next = inner.index;
        for (index, key) in inner.ring.iter().skip(start) {
            if !scope.covers(key) {
                continue;
            }
            if newest.len() >= limit && !newest.contains_key(key) {
                // Full: the next page starts before this change.
                next = index - 1;
                break;
            }
            newest.insert(key.clone(), *index);
        }
        let mut keys: Vec<(u64, Arc<str>)> = newest.into_iter().map(|(k, i)| (i, k)).collect();
        keys.sort();
        Ok(Changes { keys, next })
    }

    /// Parks a blocking request until something in `scope` changes after
    /// `after`, or `wait` passes. When it changed already (or the history
    /// is gone, or too many are parked, or the node stops) the job comes
    /// back, to be run at once.
    pub fn park(
        &self,
        scope: Scope,
        after: u64,
        wait: Duration,
        job: Job<C>,
    ) -> Result<(), Job<C>> {
        let mut inner = self.lock();
        if inner.stopping
            || inner.parked.len() >= MAX_PARKED
            || changed_since(&inner, &scope, after) != Ok(false)
        {
            return Err(job);
        }
        if inner.parked.is_empty() && !inner.matching {
            // Nobody waits: the changes so far need no matching (and must
            // not wake this request, which `changed_since` just checked).
            inner.matched = inner.index;
        }
        inner.parked.push(Parked {
            scope,
            deadline: Instant::now() + wait,
            job,
        });
        drop(inner);
        self.wake.notify_all();
        Ok(())
    }

    /// How many requests are parked.
    pub fn parked(&self) -> usize {
        self.lock().parked.len()
    }

    /// Wakes every parked request (the node stops).
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.wake.notify_all();
    }

    /// Takes the parked requests that are due: touched by changes not yet
    /// matched, past their deadline, or every one when stopping. Waits
    /// until there is one, or until stopped and none is left. The matching
    /// runs without the lock, which the writer takes after every commit.
    fn due(&self) -> Option<Vec<Job<C>>> {
        let mut inner = self.lock();
        loop {
            let now = Instant::now();
            let start = inner.ring.partition_point(|(i, _)| *i <= inner.matched);
            let fresh: HashSet<Arc<str>> = inner
                .ring
                .iter()
                .skip(start)
                .map(|(_, k)| k.clone())
                .collect();
            inner.matched = inner.index;
            let stopping = inner.stopping;
            let mut parked = std::mem::take(&mut inner.parked);
            inner.matching = true;
            drop(inner);
            let ready: Vec<Job<C>> = parked
                .extract_if(.., |p| {
                    stopping || p.deadline <= now || p.scope.touched_by(&fresh)
                })
                .map(|p| p.job)
                .collect();
            inner = self.lock();
            inner.matching = false;
            // Requests parked meanwhile were checked by `park` itself.
            parked.append(&mut inner.parked);
            inner.parked = parked;
            if !ready.is_empty() {
                return Some(ready);
            }
            if stopping {
                return None;
            }
            if inner.matched < inner.index {
                continue;
            }
            let next_deadline = inner.parked.iter().map(|p| p.deadline).min();
            let timeout = next_deadline
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(3600));
            inner = self
                .wake
                .wait_timeout(inner, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

fn changed_since<C>(inner: &Inner<C>, scope: &Scope, after: u64) -> Result<bool, Gone> {
    if after < inner.floor {
        return Err(Gone {
            current: inner.index,
        });
    }
    let start = inner.ring.partition_point(|(i, _)| *i <= after);
    Ok(inner.ring.iter().skip(start).any(|(_, k)| scope.covers(k)))
}

/// Starts the watch thread and its answer threads; they end after
/// [`Watch::stop`], once every parked request is answered.
pub fn start<C: Send + Sync + 'static>(
    watch: Arc<Watch<C>>,
    context: Arc<C>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || {
            // Jobs due to be answered. Only parked requests become jobs, so
            // at most MAX_PARKED (and the few parked while it drains) are
            // in it; when it is full the watch thread waits for an answer
            // thread before it hands over more.
            let (tx, rx) = mpsc::sync_channel::<Job<C>>(MAX_PARKED);
            let rx = Arc::new(Mutex::new(rx));
            let answerers: Vec<_> = (0..ANSWER_THREADS)
                .filter_map(|i| {
                    let rx = rx.clone();
                    let context = context.clone();
                    std::thread::Builder::new()
                        .name(format!("watch-answer-{i}"))
                        .spawn(move || loop {
                            let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                            match job {
                                Ok(job) => job(&context),
                                Err(_) => return,
                            }
                        })
                        .ok()
                })
                .collect();
            while let Some(jobs) = watch.due() {
                for job in jobs {
                    if let Err(mpsc::SendError(job)) = tx.send(job) {
                        job(&context);
                    }
                }
            }
            drop(tx);
            for a in answerers {
                let _ = a.join();
            }
        })
}

/// Parses a wait such as `30s`, `500ms`, `5m` or `10` (seconds), capped
/// at `MAX_WAIT`.
pub fn parse_wait(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: f64 = number
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs.min(MAX_WAIT.as_secs_f64())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn changes_are_each_key_once_at_its_newest_index() {
        let w = Watch::<()>::new(10);
        w.record(13, &keys(&["a/1", "b/1", "a/2"]));
        w.record(15, &keys(&["a/1", "c"]));
        assert_eq!(w.index(), 15);
        let page = w.changes(&Scope::Prefix("a/".into()), 10, 100).unwrap();
        let got: Vec<(u64, &str)> = page.keys.iter().map(|(i, k)| (*i, &**k)).collect();
        assert_eq!(got, vec![(13, "a/2"), (14, "a/1")]);
        assert_eq!(page.next, 15);
        // From a later index, only what came after it.
        let page = w.changes(&Scope::Prefix(String::new()), 13, 100).unwrap();
        assert_eq!(page.keys.len(), 2);
        // Before the history: gone, with the current index.
        assert_eq!(
            w.changes(&Scope::Prefix(String::new()), 9, 100),
            Err(Gone { current: 15 })
        );
        // A page that is full stops before the next new key.
        let page = w.changes(&Scope::Prefix(String::new()), 10, 2).unwrap();
        assert_eq!(page.keys.len(), 2);
        assert_eq!(page.next, 12);
    }

    #[test]
    fn changed_since_looks_at_the_scope_only() {
        let w = Watch::<()>::new(0);
        w.record(2, &keys(&["users/ann", "jobs/1"]));
        assert_eq!(
            w.changed_since(&Scope::Key("users/ann".into()), 0),
            Ok(true)
        );
        assert_eq!(
            w.changed_since(&Scope::Key("users/ann".into()), 1),
            Ok(false)
        );
        assert_eq!(w.changed_since(&Scope::Prefix("jobs/".into()), 1), Ok(true));
        assert_eq!(
            w.changed_since(&Scope::Prefix("users/".into()), 2),
            Ok(false)
        );
    }

    #[test]
    fn the_history_is_bounded() {
        let w = Watch::<()>::new(0);
        let many: Vec<String> = (0..HISTORY + 10).map(|i| format!("k{i}")).collect();
        w.record(many.len() as u64, &many);
        assert_eq!(w.lock().ring.len(), HISTORY);
        assert!(w.changed_since(&Scope::Prefix(String::new()), 5).is_err());
        assert_eq!(w.changed_since(&Scope::Prefix(String::new()), 10), Ok(true));
    }

    #[test]
    fn parked_jobs_wake_on_a_change_in_scope_or_at_their_deadline() {
        let w = Watch::<()>::new(0);
        let (tx, rx) = mpsc::channel();
        for name in ["users", "jobs"] {
            let tx = tx.clone();
            let scope = Scope::Prefix(format!("{name}/"));
            let parked = w.park(
                scope,
                0,
                Duration::from_secs(60),
                Box::new(move |_: &()| {
                    let _ = tx.send(name);
                }),
            );
            assert!(parked.is_ok());
        }
        // Already changed: not parked, the job comes back.
        w.record(1, &keys(&["jobs/7"]));
        assert!(w
            .park(
                Scope::Key("jobs/7".into()),
                0,
                MAX_WAIT,
                Box::new(|_: &()| {})
            )
            .is_err());
        let due = w.due().expect("a due job");
        assert_eq!(due.len(), 1, "only the jobs/ watcher");
        assert_eq!(w.parked(), 1);
        // The deadline wakes the other.
        w.park(
            Scope::Key("x".into()),
            1,
            Duration::from_millis(30),
            Box::new(|_: &()| {}),
        )
        .ok()
        .expect("parked");
        let due = w.due().expect("the short wait");
        assert_eq!(due.len(), 1);
        assert_eq!(w.parked(), 1);
        // Stopping wakes every one left, then ends.
        w.stop();
        assert_eq!(w.due().map(|d| d.len()), Some(1));
        assert!(w.due().is_none());
        drop(rx);
    }

    #[test]
    fn waits_read_as_go_durations() {
        assert_eq!(parse_wait("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_wait("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_wait("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_wait("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_wait("1h"), None);
        assert_eq!(parse_wait("soon"), None);
        assert_eq!(parse_wait("99m"), Some(MAX_WAIT));
    }
}
