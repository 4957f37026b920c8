//! The reload loop: the one place a new config is read, validated and
//! applied. SIGHUP, the admin API and the file watcher all send requests
//! here, so reloads are serialised and each is reported once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use levee_admin::{ReloadOutcome, ReloadRequest, ReloadSource};
use levee_proxy::Gateway;
use notify::Watcher;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where reloads read the config from.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// A file, re-read on SIGHUP, on `POST /api/v1/reload`, and (when
    /// `watch` is set) whenever it changes.
    File { path: PathBuf, watch: bool },
    /// A config built in code (the demo): nothing to reload from.
    Fixed,
}

/// Editors write a file in several steps; wait this long after the first
/// change before reading it.
const DEBOUNCE: Duration = Duration::from_millis(150);

pub(crate) async fn run(
    gateway: Arc<Gateway>,
    source: ConfigSource,
    mut requests: mpsc::Receiver<ReloadRequest>,
    mut watch: mpsc::Receiver<()>,
    stop: CancellationToken,
    // What the file held when it was last applied, to ignore touches. Read
    // by the caller before this task starts, or a change made in between
    // would look like the running config and be skipped.
    mut last_applied: Option<Vec<u8>>,
) {
    let initial = gateway.config();
    let started = Started {
        admin: initial.admin.clone(),
        runtime: initial.runtime.clone(),
    };
    let mut watching = true;
    loop {
        let (origin, reply) = tokio::select! {
            _ = stop.cancelled() => return,
            r = requests.recv() => match r {
                Some(r) => (r.source, r.reply),
                None => return,
            },
            w = watch.recv(), if watching => match w {
                Some(()) => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while watch.try_recv().is_ok() {}
                    (ReloadSource::FileWatch, None)
                }
                // No watcher (or it stopped): reloads still come by request.
                None => {
                    watching = false;
                    continue;
                }
            },
        };
        let outcome = match &source {
            ConfigSource::Fixed => ReloadOutcome::Unavailable {
                reason: "this instance was not started from a config file".to_string(),
            },
            ConfigSource::File { path, .. } => {
                let text = std::fs::read(path).ok();
                if origin == ReloadSource::FileWatch && text.is_some() && text == last_applied {
                    continue;
                }
                let outcome = reload_file(&gateway, &started, path, origin);
                if matches!(outcome, ReloadOutcome::Applied { .. }) {
                    last_applied = text;
                }
                outcome
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
    }
}

/// The settings that only take effect at start, as the process started.
struct Started {
    admin: levee_config::Admin,
    runtime: levee_config::Runtime,
}

fn reload_file(gateway: &Gateway, started: &Started, path: &Path, origin: ReloadSource) -> ReloadOutcome {
    let config = match levee_config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            gateway.record_reload(origin.as_str(), errors.lines());
            tracing::error!(
                source = origin.as_str(),
                errors = %errors.lines().join("; "),
                "reload rejected; the running config keeps serving"
            );
            return ReloadOutcome::Rejected {
                errors: errors.lines(),
            };
        }
    };
    let mut warnings = Vec::new();
    // The token is read per request, so it changes with a reload.
    if config.admin.listen != started.admin.listen {
        warnings.push(format!(
            "admin.listen: still {} until restart",
            started.admin.listen
        ));
    }
    if config.runtime != started.runtime {
        warnings.push(format!(
            "runtime.workers: still {} until restart",
            started.runtime.workers
        ));
    }
    match gateway.apply(config) {
        Ok(()) => {
            gateway.record_reload(origin.as_str(), Vec::new());
            tracing::info!(source = origin.as_str(), "config reloaded");
            for w in &warnings {
                tracing::warn!("{w}");
            }
            ReloadOutcome::Applied { warnings }
        }
        Err(e) => {
            gateway.record_reload(origin.as_str(), vec![e.to_string()]);
            tracing::error!(source = origin.as_str(), error = %e, "reload rejected; the running config keeps serving");
            ReloadOutcome::Rejected {
                errors: vec![e.to_string()],
            }
        }
    }
}

/// Watches the config file's directory (editors and config tools replace
/// files by renaming, which a watch on the file itself would miss) and
/// signals `tx` when the file may have changed.
pub(crate) fn watch(path: &Path, tx: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    let file: PathBuf = path.file_name().map(PathBuf::from).unwrap_or_default();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event
            .paths
            .iter()
            .any(|p| p.file_name() == Some(file.as_os_str()))
        {
            // A full channel means a reload is already pending: coalesce.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
