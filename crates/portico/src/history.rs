//! The last applied config versions, for `/config/versions` and `portico
//! config`: what was applied, when, from whose input, and what changed.
//!
//! Entries are built whole (diff included) before they are pushed, and
//! pushed under a lock readers take too, so a reader during a reload sees
//! the list before or after the new version, never a version without its
//! config or diff. Configs are shared with the proxy's snapshots (`Arc`),
//! so keeping a version costs its diff, not a copy of its config.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use portico_model::{Config, ConfigDiff, Version};

/// Which provider's input changed to produce a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    File,
    Docker,
    /// Both at once: the first version, when Docker is configured.
    FileAndDocker,
    /// A cluster controller's snapshot (`portico proxy`), merged with the
    /// proxy's own `[proxy]` and `[admin]`.
    Controller,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Docker => "docker",
            Source::FileAndDocker => "file+docker",
            Source::Controller => "controller",
        }
    }
}

/// One applied version.
pub struct Entry {
    pub version: Version,
    pub applied: SystemTime,
    pub source: Source,
    pub config: Arc<Config>,
    /// The version applied before this one, and what changed from it;
    /// `None` for the first version the process applied.
    pub previous: Option<(Version, ConfigDiff)>,
    /// One line: the diff's summary, or what the first version holds.
    pub summary: String,
}

impl Entry {
    pub fn applied_rfc3339(&self) -> String {
        humantime::format_rfc3339_seconds(self.applied).to_string()
    }
}

/// Why an id names no kept version.
#[derive(Debug, PartialEq, Eq)]
pub enum FindError {
    /// Not 4 to 64 hex digits.
    Malformed,
    NotFound,
    /// A prefix that several kept versions share (their 12-digit ids).
    Ambiguous(Vec<String>),
}

pub struct History {
    capacity: usize,
    /// What relative file paths in these configs are relative to (the
    /// config file's directory), for renderings that must name files.
    base_dir: Option<PathBuf>,
    /// Oldest first.
    entries: Mutex<VecDeque<Arc<Entry>>>,
}

impl History {
    pub fn new(capacity: usize, base_dir: Option<PathBuf>) -> History {
        History {
            capacity: capacity.max(1),
            base_dir,
            entries: Mutex::new(VecDeque::with_capacity(capacity.max(1))),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn base_dir(&self) -> Option<&Path> {
        self.base_dir.as_deref()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Arc<Entry>>> {
        // A panic while holding the lock leaves whole entries (pushes and
        // pops are single steps), so the list is still sound.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a version just applied (or about to be). The diff against
    /// the newest kept version is computed outside the lock: a diff of
    /// thousands of services must not hold up readers.
    pub fn record(&self, version: Version, config: Arc<Config>, source: Source) {
        let applied = SystemTime::now();
        let mut newest = self.newest();
        loop {
            let entry = Arc::new(build_entry(
                version,
                applied,
                source,
                config.clone(),
                newest.as_deref(),
            ));
            let mut entries = self.lock();
            let now_newest = entries.back().cloned();
            let same = match (&newest, &now_newest) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if !same {
                // Another version was recorded meanwhile: diff against it.
                drop(entries);
                newest = now_newest;
                continue;
            }
            if entries.len() == self.capacity {
                entries.pop_front();
            }
            entries.push_back(entry);
            return;
        }
    }

    pub fn newest(&self) -> Option<Arc<Entry>> {
        self.lock().back().cloned()
    }

    /// Every kept version, newest first.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.lock().iter().rev().cloned().collect()
    }

    /// The version an id names: its full digest, or a prefix of at least 4
    /// hex digits (the 6 of the logs' `updatedVersion=`, the 12 of
    /// `version=`) that only one kept version has.
    pub fn find(&self, id: &str) -> Result<Arc<Entry>, FindError> {
        let id = id.trim().to_ascii_lowercase();
        if !(4..=64).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FindError::Malformed);
        }
        let matching: Vec<Arc<Entry>> = self
            .entries()
            .into_iter()
            .filter(|e| e.version.full().starts_with(&id))
            .collect();
        match matching.as_slice() {
            [] => Err(FindError::NotFound),
            [one] => Ok(one.clone()),
            many => Err(FindError::Ambiguous(
                many.iter().map(|e| e.version.to_string()).collect(),
            )),
        }
    }
}

fn build_entry(
    version: Version,
    applied: SystemTime,
    source: Source,
    config: Arc<Config>,
    before: Option<&Entry>,
) -> Entry {
    let previous = before.map(|b| (b.version, ConfigDiff::between(&b.config, &config)));
    let summary = match &previous {
        Some((_, diff)) => diff.summary(),
        None => first_summary(&config),
    };
    Entry {
        version,
        applied,
        source,
        config,
        previous,
        summary,
    }
}

/// What a first version holds: `first version: 2 services, 3 hosts, 4 upstreams`.
fn first_summary(config: &Config) -> String {
    let hosts: std::collections::BTreeSet<String> = config
        .services
        .iter()
        .flat_map(|s| s.hosts.iter().map(ToString::to_string))
        .collect();
    let upstreams: std::collections::BTreeSet<_> = config
        .services
        .iter()
        .flat_map(|s| s.upstreams.iter())
        .collect();
    let n =
        |count: usize, what: &str| format!("{count} {what}{}", if count == 1 { "" } else { "s" });
    format!(
        "first version: {}, {}, {}",
        n(config.services.len(), "service"),
        n(hosts.len(), "host"),
        n(upstreams.len(), "upstream")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(upstreams: &[&str]) -> Arc<Config> {
        let ups: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
        Arc::new(
            Config::parse(
                &format!(
                    "[[service]]\nname = \"web\"\nhosts = [\"web.test\"]\nupstreams = [{}]\n",
                    ups.join(", ")
                ),
                "t.toml",
            )
            .unwrap(),
        )
    }

    fn record(h: &History, c: Arc<Config>, source: Source) -> Version {
        let v = Version::of(&c);
        h.record(v, c, source);
        v
    }

    #[test]
    fn keeps_the_last_n_with_diffs_against_their_predecessors() {
        let h = History::new(2, None);
        let v1 = record(&h, config(&["10.0.0.1:80"]), Source::FileAndDocker);
        assert_eq!(
            h.newest().unwrap().summary,
            "first version: 1 service, 1 host, 1 upstream"
        );
        let v2 = record(&h, config(&["10.0.0.1:80", "10.0.0.2:80"]), Source::Docker);
        let v3 = record(&h, config(&["10.0.0.2:80"]), Source::File);
        let kept: Vec<Version> = h.entries().iter().map(|e| e.version).collect();
        assert_eq!(kept, [v3, v2], "newest first, the oldest dropped");
        let e3 = h.find(&v3.short()).unwrap();
        assert_eq!(e3.source.as_str(), "file");
        let (before, diff) = e3.previous.as_ref().unwrap();
        assert_eq!(*before, v2);
        assert_eq!(diff.upstreams_removed, ["10.0.0.1:80".parse().unwrap()]);
        assert_eq!(e3.summary, "service web changed (upstreams); -1 upstream");
        // The second kept its diff to the first, which is gone.
        assert_eq!(
            h.find(&v2.to_string())
                .unwrap()
                .previous
                .as_ref()
                .unwrap()
                .0,
            v1
        );
        assert_eq!(h.find(&v1.full()).err(), Some(FindError::NotFound));
        assert!(
            is_rfc3339(&e3.applied_rfc3339()),
            "{}",
            e3.applied_rfc3339()
        );
    }

    fn is_rfc3339(s: &str) -> bool {
        s.len() == 20 && s.ends_with('Z') && s.as_bytes()[10] == b'T'
    }

    #[test]
    fn ids_are_full_short_or_unique_prefixes() {
        let h = History::new(20, None);
        let versions: Vec<Version> = (1..=40)
            .map(|i| record(&h, config(&[&format!("10.0.0.{i}:80")]), Source::File))
            .collect();
        let kept = &versions[20..];
        let v = kept[0];
        for id in [
            v.full(),
            v.to_string(),
            v.short(),
            v.full()[..4].to_uppercase(),
        ] {
            match h.find(&id) {
                Ok(e) => assert_eq!(e.version, v, "{id}"),
                // Four digits may well be shared among 20 versions.
                Err(FindError::Ambiguous(ids)) => {
                    assert_eq!(id.len(), 4);
                    assert!(ids.contains(&v.to_string()), "{ids:?}");
                }
                Err(e) => panic!("{id}: {e:?}"),
            }
        }
        for bad in ["", "abc", "xyz1", &"a".repeat(65), "12 34"] {
            assert_eq!(h.find(bad).err(), Some(FindError::Malformed), "{bad:?}");
        }
        // A prefix of one dropped version only.
        let gone = versions[..20]
            .iter()
            .find(|g| kept.iter().all(|k| !k.full().starts_with(&g.short())))
            .expect("some dropped version's short id is not shared");
        assert_eq!(h.find(&gone.short()).err(), Some(FindError::NotFound));
    }

    #[test]
    fn readers_during_records_see_whole_entries() {
        let h = Arc::new(History::new(5, None));
        let writer = {
            let h = h.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    record(
                        &h,
                        config(&[&format!("10.0.{}.{}:80", i / 250, i % 250)]),
                        Source::Docker,
                    );
                }
            })
        };
        while !writer.is_finished() {
            let entries = h.entries();
            assert!(entries.len() <= 5);
            for pair in entries.windows(2) {
                // Each entry's diff is against the entry kept just before it.
                assert_eq!(pair[0].previous.as_ref().unwrap().0, pair[1].version);
            }
        }
        writer.join().unwrap();
        assert_eq!(h.entries().len(), 5);
    }
}
