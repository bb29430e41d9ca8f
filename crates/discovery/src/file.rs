//! The TOML file provider: the default source of routes, needing no Docker.
//!
//! The file's *directory* is watched, not the file: editors and config
//! managers replace files by renaming a new one over the old (and Docker
//! and Kubernetes mount configs through swapped symlinks), which a watch on
//! the old inode would miss.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use portico_model::{Config, ConfigErrors};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Quiet time after the last file event before the file is read, so a
/// save made of several writes is read once, whole.
const DEBOUNCE: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub enum LoadError {
    Read { path: PathBuf, error: io::Error },
    Invalid(ConfigErrors),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Read { path, error } => write!(f, "cannot read {}: {error}", path.display()),
            LoadError::Invalid(errors) => write!(f, "{errors}"),
        }
    }
}

/// Reads and validates the config file.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read {
        path: path.to_owned(),
        error,
    })?;
    Config::parse(&text, &path.display().to_string()).map_err(LoadError::Invalid)
}

/// Watches `path` until `shutdown`, calling `on_config` with the config
/// each time the file changes or `reload` is notified (SIGHUP). A file that
/// can't be read or doesn't validate is logged, problem by problem, and
/// skipped: the caller keeps what it has.
pub async fn watch(
    path: PathBuf,
    reload: Arc<Notify>,
    shutdown: CancellationToken,
    mut on_config: impl FnMut(Config),
) -> Result<(), notify::Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_owned());
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match event {
            Ok(event) => {
                !event.kind.is_access()
                    && event.paths.iter().any(|p| p.file_name() == name.as_deref())
            }
            // Overflow and the like: re-read to be safe.
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tracing::info!(file = %path.display(), "watching config file");

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = reload.notified() => {
                tracing::info!(file = %path.display(), "reload requested");
            }
            got = rx.recv() => {
                if got.is_none() {
                    return Ok(());
                }
                loop {
                    tokio::select! {
                        more = rx.recv() => if more.is_none() { return Ok(()) },
                        _ = tokio::time::sleep(DEBOUNCE) => break,
                    }
                }
            }
        }
        let loaded = match tokio::fs::read_to_string(&path).await {
            Ok(text) => {
                Config::parse(&text, &path.display().to_string()).map_err(LoadError::Invalid)
            }
            Err(error) => Err(LoadError::Read {
                path: path.clone(),
                error,
            }),
        };
        match loaded {
            Ok(config) => on_config(config),
            Err(LoadError::Invalid(errors)) => {
                for e in &errors.0 {
                    tracing::error!(file = %e.origin, line = e.line, field = %e.field, error = %e, "invalid config");
                }
                tracing::error!(file = %path.display(), problems = errors.0.len(), "config rejected; the previous version keeps serving");
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "config rejected; the previous version keeps serving");
            }
        }
    }
}

impl std::error::Error for LoadError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_reports_missing_and_invalid_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portico.toml");
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read ") && e.contains("portico.toml"),
            "{e}"
        );
        std::fs::write(&path, "[proxy]\nbogus = 1\n").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.contains("portico.toml:2:1: proxy.bogus: unknown field `bogus`"),
            "{e}"
        );
    }
}
