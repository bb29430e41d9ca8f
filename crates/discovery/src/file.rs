//! The TOML file provider: the default source of routes, needing no Docker.
//!
//! Directories are watched, not files: editors and config managers replace
//! files by renaming a new one over the old (and Docker and Kubernetes
//! mount configs through swapped symlinks), which a watch on the old inode
//! would miss. The config file's directory is watched, and so is the
//! directory of every file it refers to (certificates, keys, CAs), so a
//! renewed certificate is picked up like an edited config.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use portico_model::{Config, ConfigErrors};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Quiet time after the last file event before the files are read, so a
/// save made of several writes is read once, whole.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Referenced files larger than this are refused rather than read whole: a
/// certificate chain or key is a few KiB.
const MAX_REFERENCED_FILE: u64 = 1024 * 1024;

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

impl std::error::Error for LoadError {}

/// Reads and validates the config file, then reads the files it refers to
/// into [`Config::files`]. A referenced file that can't be read is recorded
/// as such (the service using it is refused later, not the whole config).
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read {
        path: path.to_owned(),
        error,
    })?;
    let mut config =
        Config::parse(&text, &path.display().to_string()).map_err(LoadError::Invalid)?;
    for file in config.referenced_files() {
        let data = read_limited(&resolve(path, &file))
            .map(Arc::from)
            .map_err(|e| e.to_string());
        config.files.insert(file, data);
    }
    Ok(config)
}

fn read_limited(path: &Path) -> io::Result<Vec<u8>> {
    let len = std::fs::metadata(path)?.len();
    if len > MAX_REFERENCED_FILE {
        return Err(io::Error::other(format!(
            "{len} bytes is more than the {MAX_REFERENCED_FILE} a certificate or key file may have"
        )));
    }
    std::fs::read(path)
}

/// Paths in the config are relative to the config file's directory.
fn resolve(config_path: &Path, file: &str) -> PathBuf {
    let file = Path::new(file);
    if file.is_absolute() {
        return file.to_owned();
    }
    config_path
        .parent()
        .map_or_else(|| file.to_owned(), |dir| dir.join(file))
}

/// The directory to watch for `path`, made absolute so that event paths
/// (which notify reports under the watched directory) compare equal.
fn watch_target(path: &Path) -> (PathBuf, PathBuf) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let dir = dir.canonicalize().unwrap_or(dir);
    let file = dir.join(path.file_name().unwrap_or_default());
    (dir, file)
}

/// Watches `path` until `shutdown`, calling `on_config` with the config
/// each time the file or a file it refers to changes, or `reload` is
/// notified (SIGHUP). A config that can't be read or doesn't validate is
/// logged, problem by problem, and skipped: the caller keeps what it has.
pub async fn watch(
    path: PathBuf,
    reload: Arc<Notify>,
    shutdown: CancellationToken,
    mut on_config: impl FnMut(Config),
) -> Result<(), notify::Error> {
    let targets: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let event_targets = targets.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match event {
            Ok(event) => {
                let targets = event_targets.lock().unwrap_or_else(|e| e.into_inner());
                !event.kind.is_access() && event.paths.iter().any(|p| targets.contains(p))
            }
            // Overflow and the like: re-read to be safe.
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(());
        }
    })?;
    let mut watched: BTreeSet<PathBuf> = BTreeSet::new();
    let mut update_watches = |files: &[PathBuf]| -> Result<(), notify::Error> {
        let pairs: BTreeMap<PathBuf, PathBuf> = files
            .iter()
            .map(|f| {
                let (dir, file) = watch_target(f);
                (file, dir)
            })
            .collect();
        let dirs: BTreeSet<PathBuf> = pairs.values().cloned().collect();
        for dir in dirs.difference(&watched) {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; changes there need SIGHUP");
            }
        }
        for dir in watched.difference(&dirs) {
            let _ = watcher.unwatch(dir);
        }
        watched = dirs;
        *targets.lock().unwrap_or_else(|e| e.into_inner()) = pairs.into_keys().collect();
        Ok(())
    };
    update_watches(std::slice::from_ref(&path))?;
    if let Ok(config) = load(&path) {
        let mut files = vec![path.clone()];
        files.extend(config.referenced_files().iter().map(|f| resolve(&path, f)));
        update_watches(&files)?;
        // The caller read the file before the watch was in place: an edit
        // made in between would otherwise wait for the next one. Unchanged
        // configs are recognised downstream and cost nothing.
        on_config(config);
    }
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
        let loaded = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || load(&path)).await
        };
        match loaded {
            Ok(Ok(config)) => {
                let mut files = vec![path.clone()];
                files.extend(config.referenced_files().iter().map(|f| resolve(&path, f)));
                update_watches(&files)?;
                on_config(config);
            }
            Ok(Err(LoadError::Invalid(errors))) => {
                for e in &errors.0 {
                    tracing::error!(file = %e.origin, line = e.line, field = %e.field, error = %e, "invalid config");
                }
                tracing::error!(file = %path.display(), problems = errors.0.len(), "config rejected; the previous version keeps serving");
            }
            Ok(Err(e)) => {
                tracing::error!(file = %path.display(), error = %e, "config rejected; the previous version keeps serving");
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "config load failed; the previous version keeps serving");
            }
        }
    }
}

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

    #[test]
    fn referenced_files_are_read_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portico.toml");
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        std::fs::write(dir.path().join("certs/a.pem"), "CERT").unwrap();
        std::fs::write(
            &path,
            "[proxy]\nhttps_listen = \"127.0.0.1:0\"\n[[service]]\nname = \"a\"\nhosts = [\"a.test\"]\ntls_cert = \"certs/a.pem\"\ntls_key = \"certs/missing.pem\"\n",
        )
        .unwrap();
        let c = load(&path).unwrap();
        assert_eq!(c.files["certs/a.pem"].as_deref(), Ok(&b"CERT"[..]));
        assert!(c.files["certs/missing.pem"].is_err());
    }
}
