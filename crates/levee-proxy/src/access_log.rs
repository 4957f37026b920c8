//! The access log: one line per request, written off the request path.
//!
//! When a response ends, its request hands a small [`Entry`] to a bounded
//! channel with `try_send`. The entry holds only what was already at hand —
//! indices into the request's config snapshot, `Arc` clones, slices of the
//! request head — so the request path neither formats nor copies text. A
//! writer thread formats entries in batches and appends each batch with one
//! write. When the channel is full (a slow disk, a pipe nobody reads) the
//! entry is dropped and counted: a request never waits for its log line.
//!
//! The writer is an OS thread, not a task: a write to a stuck file blocks in
//! the kernel, and on a runtime worker that would stall requests, while on
//! the runtime's blocking pool it would stall the runtime's shutdown, which
//! waits for every blocking task. The gateway owns the writers: it starts
//! one per configuration of the log, and at shutdown, once every request
//! has ended, lets them write what is left and waits for them (bounded).

mod entry;
mod format;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::{Method, Uri, Version};
use levee_config::{AccessLog, LogField, LogFormat, LogOutput};
use levee_core::attempt::Stop;
use levee_core::fault::Kind as FaultKind;
use levee_core::outcome::ErrorKind;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;

use self::entry::{Entry, RequestLine};
use self::format::Format;
use crate::conn::ConnInfo;
use crate::fields::FieldsView;
use crate::metrics::AccessLogMetrics;
use crate::snapshot::Snapshot;

/// How long an idle writer sleeps before looking at its stop and reopen
/// flags.
const TICK: Duration = Duration::from_millis(200);
/// A batch is written once it reaches this size, even if more entries wait.
const BATCH_BYTES: usize = 64 * 1024;
/// How often a failing log says so.
const WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("access_log.path: cannot open {}: {source}", path.display())]
pub struct AccessLogError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Which fields lines need, as bits of indices into [`LogField::ALL`].
#[derive(Clone, Copy)]
struct Wants(u32);

impl Wants {
    fn of(config: &AccessLog) -> Wants {
        let fields: &[LogField] = match config.format {
            LogFormat::Json => &config.fields,
            LogFormat::Common => &CLF,
            LogFormat::Combined => &COMBINED,
        };
        Wants(fields.iter().fold(0, |bits, f| bits | Wants::bit(*f)))
    }

    fn bit(field: LogField) -> u32 {
        LogField::ALL
            .iter()
            .position(|f| *f == field)
            .map_or(0, |i| 1 << i)
    }

    fn has(self, field: LogField) -> bool {
        self.0 & Wants::bit(field) != 0
    }

    fn any(self, fields: &[LogField]) -> bool {
        fields.iter().any(|f| self.has(*f))
    }
}

const CLF: [LogField; 6] = [
    LogField::ClientIp,
    LogField::Time,
    LogField::Method,
    LogField::Uri,
    LogField::Status,
    LogField::BytesSent,
];
const COMBINED: [LogField; 8] = [
    LogField::ClientIp,
    LogField::Time,
    LogField::Method,
    LogField::Uri,
    LogField::Status,
    LogField::BytesSent,
    LogField::Referer,
    LogField::UserAgent,
];

/// Where requests hand in their entries: one per configuration of the log.
pub(crate) struct Sink {
    tx: SyncSender<Box<Entry>>,
    wants: Wants,
    dropped: Counter,
}

/// What a request's head says, for the entry.
pub(crate) struct Head<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub version: Version,
    /// The `Host` field, or the authority of the target.
    pub host: Option<&'a HeaderValue>,
    pub fields: FieldsView<'a>,
    pub request_id: &'a HeaderValue,
}

impl Sink {
    /// Starts an entry for a request: what its head says. `head` is `None`
    /// for a request refused before it could be read.
    pub(crate) fn begin(
        self: &Arc<Sink>,
        snap: &Arc<Snapshot>,
        conn: &ConnInfo,
        client: IpAddr,
        head: Option<Head<'_>>,
    ) -> Pending {
        let wants = self.wants;
        let request_line = [
            LogField::Method,
            LogField::Path,
            LogField::Query,
            LogField::Uri,
            LogField::Protocol,
        ];
        let field = |f: LogField, name: &header::HeaderName| {
            head.as_ref()
                .filter(|_| wants.has(f))
                .and_then(|h| h.fields.first_value(name))
        };
        let entry = Entry {
            snap: snap.clone(),
            client,
            listener: wants.has(LogField::Listener).then(|| conn.listener.clone()),
            request: head
                .as_ref()
                .filter(|_| wants.any(&request_line))
                .map(|h| RequestLine {
                    method: h.method.clone(),
                    uri: h.uri.clone(),
                    version: h.version,
                }),
            host: head
                .as_ref()
                .filter(|_| wants.has(LogField::Host))
                .and_then(|h| h.host.cloned()),
            request_id: head
                .as_ref()
                .filter(|h| wants.has(LogField::RequestId) && !h.request_id.is_empty())
                .map(|h| h.request_id.clone()),
            user_agent: field(LogField::UserAgent, &header::USER_AGENT),
            referer: field(LogField::Referer, &header::REFERER),
            route: None,
            endpoint: None,
            attempts: 0,
            retry_stop: None,
            faults: 0,
            status: 0,
            proxy_status: None,
            bytes: 0,
            duration: Duration::ZERO,
            ended: SystemTime::UNIX_EPOCH,
        };
        Pending {
            sink: self.clone(),
            entry: Box::new(entry),
        }
    }

    fn send(&self, entry: Box<Entry>) {
        match self.tx.try_send(entry) {
            Ok(()) => {}
            // Full, or the writer is gone: either way the line is lost, and
            // the request must not wait.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

/// A request's entry while the request runs.
pub(crate) struct Pending {
    sink: Arc<Sink>,
    entry: Box<Entry>,
}

impl Pending {
    /// The request matched route `index` of its snapshot.
    pub fn route(&mut self, index: usize) {
        self.entry.route = u32::try_from(index).ok();
    }

    /// The latest try went to endpoint `index` of the route's upstream, and
    /// `attempts` tries have been sent.
    pub fn tried(&mut self, index: usize, attempts: usize) {
        self.entry.endpoint = u32::try_from(index).ok();
        self.entry.attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
    }

    /// Faults of these kinds were injected into the request.
    pub fn faulted(&mut self, kinds: impl Iterator<Item = FaultKind>) {
        for kind in kinds {
            self.entry.faults |= 1 << kind as u8;
        }
    }

    /// The request ended on a failure that no retry saved, for this reason.
    pub fn stopped(&mut self, stop: Stop) {
        self.entry.retry_stop = Some(stop);
    }

    /// levee answered the request itself.
    pub fn generated(&mut self, kind: ErrorKind) {
        self.entry.proxy_status = Some(kind);
    }

    /// The response ended (or was cut off): hands the entry to the writer.
    pub fn finish(mut self, status: u16, bytes: u64, duration: Duration) {
        let e = &mut self.entry;
        e.status = status;
        e.bytes = bytes;
        e.duration = duration;
        e.ended = SystemTime::now();
        self.sink.send(self.entry);
    }
}

/// A writer the gateway started.
struct Running {
    settings: AccessLog,
    sink: Arc<Sink>,
    reopen: Arc<AtomicBool>,
}

/// What a new config asks of the access log, prepared before anything
/// changes (see [`Logs::plan`]).
pub(crate) enum Plan {
    /// Same settings: the running writer stays, and reopens its file.
    Keep,
    Off,
    /// A new writer, with its file already open (unless it is a FIFO,
    /// which the writer opens itself: opening one blocks until a reader
    /// comes).
    Start(AccessLog, Option<File>),
}

/// The gateway's access log writers.
#[derive(Default)]
pub(crate) struct Logs {
    current: Option<Running>,
    /// The end of every writer started, for shutdown to wait on.
    ends: Vec<oneshot::Receiver<()>>,
    /// Tells every writer to stop once its channel is empty.
    stop: Arc<AtomicBool>,
}

impl Logs {
    /// What `config` needs. A new file is opened here, so that a path that
    /// cannot be opened refuses the config before anything has changed.
    pub fn plan(&self, config: Option<&AccessLog>) -> Result<Plan, AccessLogError> {
        let Some(config) = config else {
            return Ok(Plan::Off);
        };
        if self.current.as_ref().is_some_and(|r| &r.settings == config) {
            return Ok(Plan::Keep);
        }
        let file = match &config.output {
            LogOutput::File(path) if !is_fifo(path) => Some(open(path).map_err(|source| AccessLogError {
                path: path.clone(),
                source,
            })?),
            _ => None,
        };
        Ok(Plan::Start(config.clone(), file))
    }

    /// Carries out `plan`; returns the sink requests hand entries to. A
    /// replaced writer finishes the entries of requests still running on
    /// the old config, and ends when the last of them has.
    pub fn apply(&mut self, plan: Plan, metrics: &AccessLogMetrics) -> Option<Arc<Sink>> {
        match plan {
            Plan::Keep => {
                let running = self.current.as_ref()?;
                running.reopen.store(true, Ordering::Release);
                Some(running.sink.clone())
            }
            Plan::Off => {
                self.current = None;
                None
            }
            Plan::Start(settings, file) => {
                self.ends
                    .retain_mut(|end| matches!(end.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
                let (tx, rx) = std::sync::mpsc::sync_channel(settings.buffer);
                let (done, end) = oneshot::channel();
                let reopen = Arc::new(AtomicBool::new(false));
                let writer = Writer {
                    rx,
                    output: match &settings.output {
                        LogOutput::Stdout => Output::Stdout,
                        LogOutput::File(path) => Output::File {
                            path: path.clone(),
                            file,
                        },
                    },
                    format: Format {
                        format: settings.format,
                        fields: settings.fields.clone(),
                    },
                    stop: self.stop.clone(),
                    reopen: reopen.clone(),
                    metrics: metrics.clone(),
                    warned: None,
                };
                let spawned = std::thread::Builder::new()
                    .name("levee-access-log".to_string())
                    .spawn(move || {
                        writer.run();
                        let _ = done.send(());
                    });
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start the access log writer; requests are not logged");
                    self.current = None;
                    return None;
                }
                self.ends.push(end);
                let sink = Arc::new(Sink {
                    tx,
                    wants: Wants::of(&settings),
                    dropped: metrics.dropped_full.clone(),
                });
                self.current = Some(Running {
                    settings,
                    sink: sink.clone(),
                    reopen,
                });
                Some(sink)
            }
        }
    }

    /// Tells every writer to write what it has and stop; returns their
    /// ends to wait on.
    pub fn stop(&mut self) -> Vec<oneshot::Receiver<()>> {
        self.stop.store(true, Ordering::Release);
        std::mem::take(&mut self.ends)
    }
}

/// Waits for the writers `ends` to finish, up to `within`. Returns whether
/// they all did.
pub(crate) async fn finished(ends: Vec<oneshot::Receiver<()>>, within: Duration) -> bool {
    let all = async {
        for end in ends {
            let _ = end.await;
        }
    };
    tokio::time::timeout(within, all).await.is_ok()
}

fn is_fifo(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// Appends, creating the file readable by its owner and group only: lines
/// carry client addresses.
fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

enum Output {
    Stdout,
    /// `file` is `None` until opened, after a write failed, and after a
    /// reload asked for a reopen.
    File {
        path: PathBuf,
        file: Option<File>,
    },
}

struct Writer {
    rx: Receiver<Box<Entry>>,
    output: Output,
    format: Format,
    stop: Arc<AtomicBool>,
    reopen: Arc<AtomicBool>,
    metrics: AccessLogMetrics,
    /// When a failure was last logged.
    warned: Option<Instant>,
}

impl Writer {
    fn run(mut self) {
        let mut buf = String::with_capacity(BATCH_BYTES + 4096);
        loop {
            if self.reopen.swap(false, Ordering::AcqRel)
                && let Output::File { file, .. } = &mut self.output
            {
                // Closed now, so that a rotated file is let go of at once;
                // the path is opened again for the next line.
                *file = None;
            }
            let first = match self.rx.recv_timeout(TICK) {
                Ok(entry) => entry,
                Err(RecvTimeoutError::Timeout) if self.stop.load(Ordering::Acquire) => break,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            self.format.line(&first, &mut buf);
            drop(first);
            let mut records = 1;
            while buf.len() < BATCH_BYTES {
                let Ok(entry) = self.rx.try_recv() else { break };
                self.format.line(&entry, &mut buf);
                records += 1;
            }
            self.write(buf.as_bytes(), records);
            buf.clear();
        }
    }

    /// Writes a batch of whole lines at once: with the file in append mode,
    /// two writers (before and after a reload) never interleave within a
    /// line.
    fn write(&mut self, buf: &[u8], records: u64) {
        let result = match &mut self.output {
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(buf).and_then(|()| out.flush())
            }
            Output::File { path, file } => {
                let opened = match file {
                    Some(f) => Ok(f),
                    None => open(path).map(|f| file.insert(f)),
                };
                let result = opened.and_then(|f| f.write_all(buf));
                if result.is_err() {
                    // Reopened for the next batch: the directory may be back.
                    *file = None;
                }
                result
            }
        };
        match result {
            Ok(()) => {
                self.metrics.records.inc_by(records);
            }
            Err(e) => {
                self.metrics.write_errors.inc();
                self.metrics.dropped_write.inc_by(records);
                let now = Instant::now();
                if self.warned.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
                    self.warned = Some(now);
                    let path = match &self.output {
                        Output::Stdout => "-".to_string(),
                        Output::File { path, .. } => path.display().to_string(),
                    };
                    tracing::warn!(
                        path = %path,
                        error = %e,
                        "access log write failed; its lines are dropped (logged at most every 10 s)"
                    );
                }
            }
        }
    }
}
