// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! The keep-alive pool of idle upstream [Stream]s of a [super::TransportConnector].
//!
//! GATEHOUSE PATCH (vendor/README.md, 6): this replaces `pingora_pool::ConnectionPool` for
//! HTTP/1 and raw streams. That pool spawned one task per released connection to watch it
//! while idle, and put it behind an `Arc<tokio::sync::Mutex>`, a oneshot channel, a `Notify`
//! and an LRU entry; reusing it meant signalling that task and waiting on the mutex until the
//! task had run. Per proxied request over a keep-alive upstream that was a task spawn, five
//! allocations and a task switch.
//!
//! Here an idle stream is a plain entry in a per-key stack (the most recently used is reused
//! first, so a lull lets the least used age out) under one short lock. Nothing watches an idle
//! stream between uses: a single sweeper task per pool, running only while the pool holds
//! something, drops the streams whose idle timeout passed or whose server closed them (or sent
//! something) once per [SWEEP_EVERY]; and a stream is checked again when taken, so a reused
//! stream is never past its idle timeout and never one the server is known to have closed.
//! The cost of that is that a closed idle connection's descriptor may stay open up to
//! [SWEEP_EVERY] longer than before.

use super::{test_reusable_stream, PoolCallback};
use crate::protocols::Stream;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often the sweeper looks at the idle streams.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Idle {
    stream: Stream,
    /// Order of release over the whole pool: the smallest is the least recently used.
    seq: u64,
    since: Instant,
    deadline: Option<Instant>,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }
}

#[derive(Default)]
struct Inner {
    /// Idle streams per reuse key, oldest first. The keys are already hashes (a peer's
    /// `reuse_hash`), looked up twice per proxied request (take, put back): hashed again with
    /// ahash under a per-process random key instead of SipHash (~180 instructions a lookup).
    groups: HashMap<u64, Vec<Idle>, ahash::RandomState>,
    len: usize,
    seq: u64,
    sweeping: bool,
}

pub(crate) struct IdlePool {
    inner: Mutex<Inner>,
    capacity: usize,
    on_evict: Option<PoolCallback>,
    /// Counts the idle streams on which the server sent something.
    unexpected_data: Arc<AtomicU64>,
}

impl IdlePool {
    pub(crate) fn new(
        capacity: usize,
        on_evict: Option<PoolCallback>,
        unexpected_data: Arc<AtomicU64>,
    ) -> Arc<Self> {
        Arc::new(IdlePool {
            inner: Mutex::new(Inner::default()),
            capacity,
            on_evict,
            unexpected_data,
        })
    }

    /// Take the most recently released stream under `key` that `usable` accepts. Streams past
    /// their idle timeout and streams `usable` refuses are dropped on the way.
    pub(crate) fn take(
        &self,
        key: u64,
        mut usable: impl FnMut(&mut Stream) -> bool,
    ) -> Option<Stream> {
        loop {
            let mut idle = {
                let mut inner = self.inner.lock();
                let group = inner.groups.get_mut(&key)?;
                let idle = group.pop()?;
                inner.len -= 1;
                idle
            };
            if idle.deadline.is_some() && idle.expired(Instant::now()) {
                continue; // dropped outside the lock
            }
            if usable(&mut idle.stream) {
                return Some(idle.stream);
            }
        }
    }

    /// Keep `stream` for reuse under `key` for at most `idle_timeout`. When the pool is full the
    /// least recently used stream of the whole pool is closed to make room.
    pub(crate) fn put(self: &Arc<Self>, key: u64, stream: Stream, idle_timeout: Option<Duration>) {
        if self.capacity == 0 {
            return;
        }
        let now = Instant::now();
        let (evicted, start_sweeper) = {
            let mut inner = self.inner.lock();
            let evicted = if inner.len >= self.capacity {
                inner.evict_oldest()
            } else {
                None
            };
            inner.seq += 1;
            let idle = Idle {
                stream,
                seq: inner.seq,
                since: now,
                deadline: idle_timeout.map(|t| now + t),
            };
            inner.groups.entry(key).or_default().push(idle);
            inner.len += 1;
            let start_sweeper = !inner.sweeping;
            inner.sweeping = true;
            (evicted, start_sweeper)
        };
        if let Some(evicted) = evicted {
            if let Some(callback) = &self.on_evict {
                callback(evicted.since.elapsed());
            }
        }
        if start_sweeper {
            let pool = Arc::downgrade(self);
            pingora_runtime::current_handle().spawn(sweep(pool));
        }
    }

    /// Drop the streams that expired and those the server closed or sent something on. Returns
    /// whether anything is left (the sweeper stops when nothing is; the next `put` starts it
    /// again).
    fn sweep(&self) -> bool {
        let now = Instant::now();
        let mut closed = Vec::new();
        let left = {
            let mut inner = self.inner.lock();
            let mut removed = 0;
            inner.groups.retain(|_, group| {
                let before = group.len();
                let mut i = 0;
                while i < group.len() {
                    if group[i].expired(now)
                        || !test_reusable_stream(&mut group[i].stream, &self.unexpected_data)
                    {
                        closed.push(group.remove(i));
                    } else {
                        i += 1;
                    }
                }
                removed += before - group.len();
                !group.is_empty()
            });
            inner.len -= removed;
            if inner.len == 0 {
                inner.sweeping = false;
            }
            inner.len
        };
        drop(closed); // closing sockets outside the lock
        left > 0
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().len
    }
}

impl Inner {
    fn evict_oldest(&mut self) -> Option<Idle> {
        let key = self
            .groups
            .iter()
            .filter_map(|(key, group)| group.first().map(|idle| (idle.seq, *key)))
            .min()?
            .1;
        let group = self.groups.get_mut(&key)?;
        let idle = group.remove(0);
        if group.is_empty() {
            self.groups.remove(&key);
        }
        self.len -= 1;
        Some(idle)
    }
}

/// Clears the pool's `sweeping` flag if the sweeper ends without emptying the pool (its runtime
/// shut down), so that the next `put` starts another one. Disarmed when the sweeper ends because
/// the pool is empty: `sweep` cleared the flag itself, and a `put` may have set it again since
/// for a sweeper of its own.
struct SweeperGuard(Option<Weak<IdlePool>>);

impl Drop for SweeperGuard {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take().and_then(|p| p.upgrade()) {
            pool.inner.lock().sweeping = false;
        }
    }
}

async fn sweep(pool: Weak<IdlePool>) {
    let mut guard = SweeperGuard(Some(pool.clone()));
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        if !pool.sweep() {
            guard.0 = None;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let client: Stream = Box::new(crate::protocols::l4::stream::Stream::from(client.unwrap()));
        (client, server.unwrap().0)
    }

    fn open(stream: &mut Stream) -> bool {
        test_reusable_stream(stream, &AtomicU64::new(0))
    }

    fn pool(capacity: usize, on_evict: Option<PoolCallback>) -> Arc<IdlePool> {
        IdlePool::new(capacity, on_evict, Arc::new(AtomicU64::new(0)))
    }

    #[tokio::test]
    async fn reuses_the_most_recent_stream_of_its_key_only() {
        let pool = pool(8, None);
        let (a, _sa) = pair().await;
        let (b, _sb) = pair().await;
        let (c, _sc) = pair().await;
        let (a_id, b_id) = (a.id(), b.id());
        pool.put(1, a, None);
        pool.put(1, b, None);
        pool.put(2, c, None);
        assert_eq!(pool.take(1, open).map(|s| s.id()), Some(b_id));
        assert_eq!(pool.take(1, open).map(|s| s.id()), Some(a_id));
        assert!(pool.take(1, open).is_none());
        assert!(pool.take(3, open).is_none());
        assert_eq!(pool.len(), 1);
    }

    #[tokio::test]
    async fn never_hands_out_a_stream_past_its_idle_timeout() {
        let pool = pool(8, None);
        let (a, _sa) = pair().await;
        pool.put(1, a, Some(Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(pool.take(1, open).is_none());
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn skips_streams_the_server_closed_and_the_sweeper_drops_them() {
        let pool = pool(8, None);
        let (a, sa) = pair().await;
        let (b, sb) = pair().await;
        pool.put(1, b, None);
        pool.put(1, a, None);
        drop(sa); // the server closes the most recent one
        let mut sb = sb;
        sb.write_all(b"x").await.unwrap(); // and sends data on the other
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(1, open).is_none(), "neither stream is reusable");
        let (c, sc) = pair().await;
        pool.put(2, c, None);
        drop(sc);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!pool.sweep(), "the sweeper dropped the closed stream");
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn a_full_pool_closes_its_least_recently_used_stream() {
        let evicted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = evicted.clone();
        let callback: PoolCallback = Arc::new(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let pool = pool(2, Some(callback));
        let (a, _sa) = pair().await;
        let (b, _sb) = pair().await;
        let (c, _sc) = pair().await;
        let (b_id, c_id) = (b.id(), c.id());
        pool.put(1, a, None);
        pool.put(2, b, None);
        pool.put(1, c, None);
        assert_eq!(pool.len(), 2);
        assert_eq!(evicted.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(pool.take(1, open).map(|s| s.id()), Some(c_id));
        assert!(
            pool.take(1, open).is_none(),
            "the oldest (key 1) was closed"
        );
        assert_eq!(pool.take(2, open).map(|s| s.id()), Some(b_id));
    }
}
