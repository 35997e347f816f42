//! Logging set-up: JSON lines outside development, human-readable in development; on request
//! ([`init_off_thread`]) written to stdout by a thread of its own, so that a request never
//! waits for a `write` to the log.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

/// The `[log]` section both services share.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

/// Installs the global subscriber, writing to stdout from the calling thread. `RUST_LOG` wins
/// over `level` when set. Safe to call twice (tests build several apps in one process): later
/// calls are no-ops.
pub fn init(format: LogFormat, level: &str) {
    install(format, level, io::stdout);
}

/// Like [`init`], but the lines go through a bounded buffer that a thread of its own writes to
/// stdout, a batch at a time. A request formats its line and appends it to the buffer (no
/// system call, no allocation once the buffer has grown); when the writer falls behind by
/// [`LOG_BUFFER_BYTES`], further lines are dropped and counted ([`dropped_log_lines`]) rather
/// than stalling the requests. Keep the guard until the end of `main`: dropping it writes what
/// is still buffered.
pub fn init_off_thread(format: LogFormat, level: &str) -> LogGuard {
    let shared = Arc::new(Shared::default());
    let guard = LogGuard::spawn(shared.clone(), io::stdout());
    if guard.done.is_some() {
        install(format, level, OffThread(shared));
    } else {
        // No thread for it (resource limits): log from the caller rather than not at all.
        init(format, level);
    }
    guard
}

fn install<W>(format: LogFormat, level: &str, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(writer);
    let _ = match format {
        // JSON escapes control characters, which keeps user input from forging log lines.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// How far the log writer may fall behind before lines are dropped: a few seconds of an access
/// line per request at tens of thousands of requests per second.
pub const LOG_BUFFER_BYTES: usize = 4 << 20;

/// How long the writer waits after the first line of a batch for more to join it: at high
/// rates one `write` carries hundreds of lines; a quiet service's line still appears at once
/// to a reader.
const BATCH_WINDOW: Duration = Duration::from_millis(2);

/// How long the end of `main` waits for the writer to write what is still buffered.
const FLUSH_ON_EXIT: Duration = Duration::from_secs(2);

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped so far because the writer was [`LOG_BUFFER_BYTES`] behind.
pub fn dropped_log_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Vec<u8>>,
    ready: Condvar,
    closed: AtomicBool,
}

impl Shared {
    fn push(&self, line: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.len() + line.len() > LOG_BUFFER_BYTES {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let first = pending.is_empty();
        pending.extend_from_slice(line);
        drop(pending);
        // Only the first line of a batch wakes the writer.
        if first {
            self.ready.notify_one();
        }
    }

    /// The writer thread: takes what is pending (swapping buffers, so both keep their
    /// capacity) and writes it in one go, until the guard closes it.
    fn write_out(&self, out: &mut dyn Write) {
        let mut batch = Vec::new();
        loop {
            {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                while pending.is_empty() && !self.closed.load(Ordering::Acquire) {
                    pending = self
                        .ready
                        .wait(pending)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if pending.is_empty() {
                    return;
                }
            }
            if !self.closed.load(Ordering::Acquire) {
                std::thread::sleep(BATCH_WINDOW);
            }
            batch.clear();
            std::mem::swap(
                &mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner),
                &mut batch,
            );
            // Nowhere to report a failed write to but the log itself.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            // After a burst, do not keep megabytes around.
            if batch.capacity() > LOG_BUFFER_BYTES / 4 {
                batch = Vec::new();
            }
        }
    }
}

/// Keeps the log writer running; dropping it writes what is still buffered.
pub struct LogGuard {
    shared: Arc<Shared>,
    /// Signalled when the writer thread has written everything and ended (`None`: no thread).
    done: Option<Receiver<()>>,
}

impl LogGuard {
    /// Starts the writer thread that drains `shared` into `out`.
    fn spawn(shared: Arc<Shared>, mut out: impl Write + Send + 'static) -> Self {
        let (finished, done) = mpsc::channel();
        let writer = shared.clone();
        let started = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                writer.write_out(&mut out);
                let _ = finished.send(());
            })
            .is_ok();
        LogGuard {
            shared,
            done: started.then_some(done),
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        {
            // Under the lock: the writer cannot be between its check and its wait, so this
            // wake-up is not lost.
            let _pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.closed.store(true, Ordering::Release);
        }
        self.shared.ready.notify_one();
        // What is buffered gets written, but a stdout that no longer takes anything (a stalled
        // pipe) must not keep the process from exiting: wait for the writer a bounded time.
        if let Some(done) = self.done.take() {
            let _ = done.recv_timeout(FLUSH_ON_EXIT);
        }
    }
}

/// The `MakeWriter` of [`init_off_thread`]: each event is formatted by the subscriber and
/// handed over with a single `write_all`.
struct OffThread(Arc<Shared>);

impl<'a> MakeWriter<'a> for OffThread {
    type Writer = &'a Shared;

    fn make_writer(&'a self) -> Self::Writer {
        &self.0
    }
}

impl Write for &Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Short, non-reversible fingerprint of a secret for log correlation (never the secret itself).
pub fn fingerprint(secret: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(secret);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that records what it was given, one entry per `write_all`.
    #[derive(Clone, Default)]
    struct Record(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Record {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(buf.to_vec());
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_in_order_in_batches_and_all_of_them_on_close() {
        let shared = Arc::new(Shared::default());
        let out = Record::default();
        let guard = LogGuard::spawn(shared.clone(), out.clone());
        for i in 0..1000 {
            (&*shared).write_all(format!("line {i}\n").as_bytes()).ok();
        }
        drop(guard);
        let writes = out.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let text: String = writes.iter().map(|w| String::from_utf8_lossy(w)).collect();
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, expected);
        assert!(writes.len() < 1000, "batched: {} writes", writes.len());
    }

    #[test]
    fn a_full_buffer_drops_lines_and_counts_them() {
        let shared = Shared::default();
        let before = dropped_log_lines();
        let line = vec![b'x'; 1 << 20];
        for _ in 0..5 {
            shared.push(&line);
        }
        assert_eq!(
            shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            LOG_BUFFER_BYTES
        );
        assert!(dropped_log_lines() > before);
    }
}
