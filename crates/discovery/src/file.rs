//! The TOML file provider: the default source of routes, needing no Docker.
//!
//! Directories are watched, not files: editors and config managers replace
//! files by renaming a new one over the old (and Docker and Kubernetes
//! mount configs through swapped symlinks), which a watch on the old inode
//! would miss. The config file's directory is watched, and so is the
//! directory of every file it refers to (certificates, keys, CAs), so a
//! renewed certificate is picked up like an edited config.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use portico_model::{Config, ConfigErrors};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Quiet time after the last file event before the files are read, so a
/// save made of several writes is read once, whole.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The longest a stream of events other than writes to the config's own
/// files can put off the read: a directory whose entries keep changing
/// must not keep an edit waiting. Writes to the config itself are waited
/// out however long they last, so a slow writer is not read half-way.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

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

/// Reads a referenced file: regular files only (not a FIFO or a device,
/// which could block or never end), at most [`MAX_REFERENCED_FILE`] bytes.
pub(crate) fn read_limited(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut data = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_REFERENCED_FILE + 1)
        .read_to_end(&mut data)?;
    if data.len() as u64 > MAX_REFERENCED_FILE {
        return Err(io::Error::other(format!(
            "larger than the {MAX_REFERENCED_FILE} bytes a certificate or key file may have"
        )));
    }
    Ok(data)
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

/// Whether a file event in a watched directory may have changed the
/// config: any entry created, removed or renamed (a file may be replaced
/// under another name: Kubernetes swaps a `..data` symlink, editors rename
/// a new file over the old), but writes only to the files the config is
/// made of. A log written beside the config, as `portico run >
/// portico.log` in its directory does, changes no entry and costs no
/// re-read.
fn touches_config(event: &notify::Event, files: &BTreeSet<PathBuf>) -> bool {
    changes_entries(&event.kind)
        || writes_config(event, files)
        || (!matches!(event.kind, EventKind::Access(_)) && event.need_rescan())
}

/// Entries created, removed or renamed in the watched directory.
fn changes_entries(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
    )
}

/// Whether the event is a write to one of the config's own files.
fn writes_config(event: &notify::Event, files: &BTreeSet<PathBuf>) -> bool {
    !matches!(event.kind, EventKind::Access(_))
        && !changes_entries(&event.kind)
        && event.paths.iter().any(|p| files.contains(p))
}

/// Watches `path` until `shutdown`, calling `on_config` with the config
/// each time the file or a file it refers to changes, or `reload` is
/// notified (SIGHUP). A config that can't be read or doesn't validate is
/// logged, problem by problem, and reported as `Err` with the problems:
/// the caller keeps what it has.
pub async fn watch(
    path: PathBuf,
    reload: Arc<Notify>,
    shutdown: CancellationToken,
    mut on_config: impl FnMut(Result<Config, String>),
) -> Result<(), notify::Error> {
    // Each wanted event, and whether it is a write to the config's files.
    let (tx, mut rx) = mpsc::unbounded_channel::<bool>();
    // The config's files, as event paths name them (see `watch_target`).
    let config_files: Arc<Mutex<BTreeSet<PathBuf>>> = Arc::default();
    let watched_files = config_files.clone();
    // A re-read that finds nothing new costs only the read, so any doubt
    // (an error, a rescan) re-reads.
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let files = watched_files.lock().unwrap_or_else(|p| p.into_inner());
        let (wanted, write) = match &event {
            Err(_) => (true, false),
            Ok(e) => (touches_config(e, &files), writes_config(e, &files)),
        };
        if wanted {
            let _ = tx.send(write);
        }
    });
    let mut watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot watch the config file; reload it with SIGHUP");
            None
        }
    };
    let watching = watcher.is_some();
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
        *config_files.lock().unwrap_or_else(|p| p.into_inner()) = pairs.keys().cloned().collect();
        let Some(watcher) = watcher.as_mut() else {
            return Ok(());
        };
        for dir in dirs.difference(&watched) {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; changes there need SIGHUP");
            }
        }
        for dir in watched.difference(&dirs) {
            let _ = watcher.unwatch(dir);
        }
        watched = dirs;
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
        on_config(Ok(config));
    }
    tracing::info!(file = %path.display(), "watching config file");

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = reload.notified() => {
                tracing::info!(file = %path.display(), "reload requested");
            }
            got = rx.recv(), if watching => {
                let Some(mut writing) = got else {
                    return Ok(());
                };
                let latest = tokio::time::Instant::now() + MAX_DEBOUNCE;
                loop {
                    let quiet = tokio::time::Instant::now() + DEBOUNCE;
                    let quiet = if writing { quiet } else { quiet.min(latest) };
                    tokio::select! {
                        more = rx.recv() => match more {
                            Some(write) => writing = write,
                            None => return Ok(()),
                        },
                        _ = tokio::time::sleep_until(quiet) => break,
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
                on_config(Ok(config));
            }
            Ok(Err(LoadError::Invalid(errors))) => {
                for e in &errors.0 {
                    tracing::error!(file = %e.origin, line = e.line, field = %e.field, error = %e, "invalid config");
                }
                tracing::error!(file = %path.display(), problems = errors.0.len(), "config rejected; the previous version keeps serving");
                on_config(Err(errors.to_string()));
            }
            Ok(Err(e)) => {
                tracing::error!(file = %path.display(), error = %e, "config rejected; the previous version keeps serving");
                on_config(Err(e.to_string()));
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "config load failed; the previous version keeps serving");
                on_config(Err(e.to_string()));
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

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let e = read_limited(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file");
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'x'; MAX_REFERENCED_FILE as usize + 1]).unwrap();
        assert!(read_limited(&big)
            .unwrap_err()
            .to_string()
            .starts_with("larger than"));
    }

    /// Watches `path`, sending the first host of each config read.
    #[allow(clippy::type_complexity)]
    fn watch_first_hosts(
        path: PathBuf,
    ) -> (
        mpsc::UnboundedReceiver<String>,
        CancellationToken,
        tokio::task::JoinHandle<Result<(), notify::Error>>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watch(
            path,
            Arc::new(Notify::new()),
            shutdown.clone(),
            move |c: Result<Config, String>| {
                if let Ok(c) = c {
                    let _ = tx.send(c.services[0].hosts[0].to_string());
                }
            },
        ));
        (rx, shutdown, task)
    }

    /// Kubernetes (and similar) update a mounted config by swapping a
    /// `..data` symlink; the config's own name never changes.
    #[tokio::test]
    async fn a_symlink_swap_of_the_config_directory_is_seen() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let svc = |host: &str| format!("[[service]]\nname = \"s\"\nhosts = [\"{host}\"]\n");
        for (v, host) in [("v1", "one.test"), ("v2", "two.test")] {
            std::fs::create_dir(d.join(v)).unwrap();
            std::fs::write(d.join(v).join("portico.toml"), svc(host)).unwrap();
        }
        symlink("v1", d.join("..data")).unwrap();
        symlink("..data/portico.toml", d.join("portico.toml")).unwrap();
        let (mut rx, shutdown, task) = watch_first_hosts(d.join("portico.toml"));
        assert_eq!(rx.recv().await.as_deref(), Some("one.test"));
        symlink("v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match rx.recv().await.as_deref() {
                    Some("two.test") => return true,
                    Some(_) => continue,
                    None => return false,
                }
            }
        })
        .await;
        assert_eq!(next, Ok(true));
        shutdown.cancel();
        task.await.unwrap().unwrap();
    }

    #[test]
    fn writes_beside_the_config_are_not_changes_to_it() {
        use notify::event::{CreateKind, DataChange, RenameMode};
        let files: BTreeSet<PathBuf> = [PathBuf::from("/etc/portico/portico.toml")].into();
        let event = |kind, path: &str| notify::Event::new(kind).add_path(PathBuf::from(path));
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(touches_config(
            &event(write, "/etc/portico/portico.toml"),
            &files
        ));
        assert!(!touches_config(
            &event(write, "/etc/portico/portico.log"),
            &files
        ));
        // Only writes to the config's files are waited out past MAX_DEBOUNCE.
        assert!(writes_config(
            &event(write, "/etc/portico/portico.toml"),
            &files
        ));
        assert!(!writes_config(
            &event(write, "/etc/portico/portico.log"),
            &files
        ));
        assert!(!touches_config(
            &event(
                EventKind::Access(notify::event::AccessKind::Any),
                "/etc/portico/portico.toml"
            ),
            &files
        ));
        // Entries appearing or renamed anywhere in the directory count:
        // the config may be swapped in under another name.
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(touches_config(
            &event(renamed, "/etc/portico/..data"),
            &files
        ));
        assert!(touches_config(
            &event(EventKind::Create(CreateKind::File), "/etc/portico/x"),
            &files
        ));
    }

    /// A file beside the config that is written all the time (its log,
    /// say) neither costs a re-read per write nor puts an edit off for
    /// as long as the writes go on.
    #[tokio::test]
    async fn an_edit_is_seen_while_a_file_beside_the_config_keeps_changing() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portico.toml");
        let svc = |host: &str| format!("[[service]]\nname = \"s\"\nhosts = [\"{host}\"]\n");
        std::fs::write(&path, svc("one.test")).unwrap();
        let (mut rx, shutdown, task) = watch_first_hosts(path.clone());
        assert_eq!(rx.recv().await.as_deref(), Some("one.test"));
        let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let writer = {
            let (writing, log) = (writing.clone(), dir.path().join("portico.log"));
            std::thread::spawn(move || {
                let mut log = std::fs::File::create(log).unwrap();
                while writing.load(std::sync::atomic::Ordering::Relaxed) {
                    writeln!(log, "a request").unwrap();
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        std::fs::write(&path, svc("two.test")).unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        writing.store(false, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        // The log's creation may re-read the old config once; its writes
        // must not.
        let mut seen = seen.ok().flatten();
        if seen.as_deref() == Some("one.test") {
            seen = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .ok()
                .flatten();
        }
        assert_eq!(seen.as_deref(), Some("two.test"));
        shutdown.cancel();
        task.await.unwrap().unwrap();
        while let Ok(more) = rx.try_recv() {
            assert_eq!(more, "two.test", "re-read for a write to the log");
        }
    }
}
