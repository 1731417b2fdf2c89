//! Config file watching: tells the app *that* the config file may have changed, nothing more.
//!
//! Owns one notify watcher (with its debouncer thread) and the channel that carries its
//! notifications into tokio. It does not read, parse, validate or apply config: the reload path
//! does that when [`ConfigWatcher::changed`] resolves, and must treat a notification as a hint
//! (the content may be unchanged, or the file may be briefly missing in the middle of a replace).
//!
//! The parent directory is watched, not the file: editors and config tools replace a file by
//! renaming a new one over it (vim, `sed -i`, ansible, Kubernetes ConfigMap volumes swapping their
//! `..data` symlink), and a watch on the file follows the old inode and goes deaf after the first
//! replace. Events are then filtered by name, or a log file written beside the config would cause
//! a reload loop.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc;

/// Why a [`ConfigWatcher`] could not be started.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The path ends in `..`, `/` or nothing, so there is no file name to filter events by.
    #[error("config path {0} does not name a file")]
    NoFileName(PathBuf),
    /// The config's directory is missing, unreadable or not a directory.
    #[error("cannot watch config directory {dir}: {source}")]
    Dir { dir: PathBuf, source: io::Error },
    /// A zero debounce would make notify's debouncer thread spin.
    #[error("config watch debounce must be greater than zero")]
    ZeroDebounce,
    /// notify refused the watch (for instance the inotify watch limit was reached).
    #[error("cannot watch {dir}: {source}")]
    Notify { dir: PathBuf, source: notify::Error },
}

/// Watches one file; yields `()` (debounced) each time its content may have changed.
///
/// Dropping it stops the watch (notify's threads exit on their own shortly after).
#[derive(Debug)]
pub struct ConfigWatcher {
    /// Kept only to keep the watch alive: dropping it stops notify.
    _debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
    changes: Coalesced,
}

impl ConfigWatcher {
    /// Starts watching `path`. The file itself need not exist yet, but its directory must.
    ///
    /// `debounce` (e.g. 500 ms; must be non-zero) is how long the file must stay quiet before
    /// [`changed`](Self::changed) resolves, so a multi-step replace yields one notification.
    ///
    /// If `path` is a symlink, replacing the link, swapping a symlinked directory it goes through
    /// in the same directory (Kubernetes' `..data`), and editing the target it points to now are
    /// all seen; after the link is repointed to another directory, in-place edits there are not
    /// (recreate the watcher after a reload to follow them).
    pub fn new(path: &Path, debounce: Duration) -> Result<ConfigWatcher, WatchError> {
        if debounce.is_zero() {
            return Err(WatchError::ZeroDebounce);
        }
        let name = path
            .file_name()
            .ok_or_else(|| WatchError::NoFileName(path.to_path_buf()))?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        // Canonicalize the directory, never the file: the file may be momentarily absent during
        // a replace, and notify reports paths under the directory exactly as it was given.
        let dir = canonical_dir(parent)?;
        let config = dir.join(name);
        let mut dirs = vec![dir.clone()];
        let mut interesting = vec![config.clone()];
        if let Ok(target) = std::fs::read_link(&config) {
            // `tandem.toml -> ..data/tandem.toml`: the swap renames over `..data`, an event that
            // never names `tandem.toml`.
            if target.is_relative()
                && target.components().count() > 1
                && let Some(Component::Normal(first)) = target.components().next()
            {
                interesting.push(dir.join(first));
            }
            // The target may be edited in place where it lives.
            if let Ok(real) = std::fs::canonicalize(&config)
                && let Some(real_dir) = real.parent()
            {
                if !dirs.iter().any(|d| d == real_dir) {
                    dirs.push(real_dir.to_path_buf());
                }
                interesting.push(real);
            }
        }

        // Capacity 1 with `try_send`: one pending notification says all the reader needs, so a
        // burst coalesces instead of queueing reloads.
        let (tx, rx) = mpsc::channel(1);
        let handler = move |result: DebounceEventResult| {
            let relevant = match result {
                Ok(events) => events.iter().any(|e| is_relevant(e, &interesting)),
                Err(errors) => {
                    // An error may mean lost events; a spurious reload is cheap, a missed one not.
                    for error in &errors {
                        tracing::warn!(%error, "config watcher error");
                    }
                    true
                }
            };
            if relevant {
                // Full: a notification is already pending. Closed: the watcher is being dropped.
                let _ = tx.try_send(());
            }
        };
        let notify_err = |dir: &Path| {
            let dir = dir.to_path_buf();
            move |source| WatchError::Notify { dir, source }
        };
        let mut debouncer = new_debouncer(debounce, None, handler).map_err(notify_err(&dir))?;
        for d in &dirs {
            debouncer
                .watch(d, RecursiveMode::NonRecursive)
                .map_err(notify_err(d))?;
        }
        Ok(ConfigWatcher {
            _debouncer: debouncer,
            changes: Coalesced::new(rx, debounce),
        })
    }

    /// Resolves at the next (debounced) change; returns None if the watcher died.
    ///
    /// Resolves once no further change has been seen for the debounce interval, so between one
    /// and two intervals after the last write. Cancel-safe: a change seen by a dropped call is
    /// reported by the next one.
    pub async fn changed(&mut self) -> Option<()> {
        self.changes.next().await
    }
}

/// The debouncer handler's notifications, coalesced until none has come for `quiet`. All the
/// watcher's own timing is here, apart from notify's threads, so it is tested on tokio's paused
/// clock with notifications sent by the test.
#[derive(Debug)]
struct Coalesced {
    rx: mpsc::Receiver<()>,
    quiet: Duration,
    /// A notification was taken from `rx` but `next` was dropped before returning it.
    pending: bool,
}

impl Coalesced {
    fn new(rx: mpsc::Receiver<()>, quiet: Duration) -> Coalesced {
        Coalesced {
            rx,
            quiet,
            pending: false,
        }
    }

    /// [`ConfigWatcher::changed`]: the next notification, once `quiet` has passed without
    /// another; `None` when the sender is gone. Cancel-safe.
    async fn next(&mut self) -> Option<()> {
        if !self.pending {
            self.rx.recv().await?;
            self.pending = true;
        }
        // notify's debouncer delays each event but does not merge a burst longer than the
        // interval; wait for a quiet interval here so such a burst still yields one reload.
        while let Ok(Some(())) = tokio::time::timeout(self.quiet, self.rx.recv()).await {}
        self.pending = false;
        Some(())
    }
}

/// The canonical form of `dir`, which must be an existing directory.
fn canonical_dir(dir: &Path) -> Result<PathBuf, WatchError> {
    let err = |source| WatchError::Dir {
        dir: dir.to_path_buf(),
        source,
    };
    let canonical = std::fs::canonicalize(dir).map_err(err)?;
    // canonicalize accepts a regular file too; notify would then watch a path that never matches.
    if !canonical.is_dir() {
        return Err(err(io::Error::from(io::ErrorKind::NotADirectory)));
    }
    Ok(canonical)
}

/// Whether `event` may mean the config content changed.
fn is_relevant(event: &Event, interesting: &[PathBuf]) -> bool {
    // The kernel queue overflowed: anything may have happened.
    if event.need_rescan() {
        return true;
    }
    // notify reports opens and reads; reload itself reads the file, so counting them would loop.
    if let EventKind::Access(kind) = event.kind
        && kind != AccessKind::Close(AccessMode::Write)
    {
        return false;
    }
    event.paths.iter().any(|p| interesting.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use tokio::time::timeout;

    const DEBOUNCE: Duration = Duration::from_millis(100);
    /// Generous bound for an expected change; it resolves in ~2 debounces when all is well.
    const BOUND: Duration = Duration::from_secs(5);
    /// Absence has no event to await: wait this quiet period before saying "no change".
    const QUIET: Duration = Duration::from_millis(500);

    fn setup() -> (tempfile::TempDir, PathBuf, ConfigWatcher) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tandem.toml");
        fs::write(&path, "a = 1\n").expect("write");
        let w = ConfigWatcher::new(&path, DEBOUNCE).expect("watch");
        (dir, path, w)
    }

    async fn expect_change(w: &mut ConfigWatcher) {
        let got = timeout(BOUND, w.changed()).await;
        assert_eq!(
            got.ok(),
            Some(Some(())),
            "expected a change within {BOUND:?}"
        );
    }

    async fn expect_quiet(w: &mut ConfigWatcher) {
        assert!(
            timeout(QUIET, w.changed()).await.is_err(),
            "unexpected change"
        );
    }

    #[tokio::test]
    async fn write_in_place_is_one_change() {
        let (_dir, path, mut w) = setup();
        fs::write(&path, "a = 2\n").expect("write");
        expect_change(&mut w).await;
        expect_quiet(&mut w).await;
    }

    #[tokio::test]
    async fn rename_over_is_a_change() {
        let (dir, path, mut w) = setup();
        let tmp = dir.path().join(".tandem.toml.tmp");
        fs::write(&tmp, "a = 2\n").expect("write");
        fs::rename(&tmp, &path).expect("rename");
        expect_change(&mut w).await;
        // Still watching after the inode changed.
        fs::write(&path, "a = 3\n").expect("write");
        expect_change(&mut w).await;
    }

    #[tokio::test]
    async fn remove_and_recreate_is_a_change() {
        let (_dir, path, mut w) = setup();
        fs::remove_file(&path).expect("remove");
        fs::write(&path, "a = 2\n").expect("write");
        expect_change(&mut w).await;
    }

    #[tokio::test]
    async fn unrelated_file_and_reads_are_no_change() {
        let (dir, path, mut w) = setup();
        fs::write(dir.path().join("tandem.log"), "line\n").expect("write");
        fs::write(dir.path().join("tandem.toml.bak"), "a = 9\n").expect("write");
        // Reload reads the config; that must not look like a change.
        fs::read_to_string(&path).expect("read");
        expect_quiet(&mut w).await;
    }

    #[tokio::test]
    async fn burst_is_one_change() {
        let (_dir, path, mut w) = setup();
        // Back to back: paced writes could be stretched past the debounce by a loaded machine.
        // A burst longer than the debounce is `Coalesced`'s to merge, shown on the paused clock
        // below. One extra change is allowed for a stall of a debounce in the middle of it.
        for i in 0..20 {
            fs::write(&path, format!("a = {i}\n")).expect("write");
        }
        expect_change(&mut w).await;
        let mut extra = 0;
        while timeout(QUIET, w.changed()).await.is_ok() {
            extra += 1;
            assert!(extra <= 1, "burst not coalesced");
        }
    }

    /// Sends a notification as the debouncer's handler does (`try_send` on a channel of one).
    fn notify(tx: &mpsc::Sender<()>) {
        let _ = tx.try_send(());
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_longer_than_the_debounce_is_one_change_after_it_goes_quiet() {
        let (tx, rx) = mpsc::channel(1);
        let mut changes = Coalesced::new(rx, DEBOUNCE);
        let start = tokio::time::Instant::now();
        // 20 notifications 20 ms apart: about 400 ms in all, nearly four debounces.
        let burst = tokio::spawn(async move {
            let mut last = start;
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                last = tokio::time::Instant::now();
                notify(&tx);
            }
            (tx, last)
        });
        assert_eq!(changes.next().await, Some(()));
        let at = tokio::time::Instant::now();
        let (_tx, last) = burst.await.expect("burst");
        assert!(
            last - start >= DEBOUNCE * 3,
            "the burst took {:?}",
            last - start
        );
        // One debounce after the last notification (the timer wheel rounds up to the ms).
        let quiet = at - last;
        assert!(
            quiet >= DEBOUNCE && quiet < DEBOUNCE + Duration::from_millis(5),
            "change {quiet:?} after the last notification"
        );
        assert!(
            timeout(QUIET, changes.next()).await.is_err(),
            "a second change"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn notifications_a_quiet_debounce_apart_are_two_changes() {
        let (tx, rx) = mpsc::channel(1);
        let mut changes = Coalesced::new(rx, DEBOUNCE);
        notify(&tx);
        assert_eq!(changes.next().await, Some(()));
        tokio::time::sleep(DEBOUNCE * 2).await;
        notify(&tx);
        assert_eq!(changes.next().await, Some(()));
        assert!(
            timeout(QUIET, changes.next()).await.is_err(),
            "a third change"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_seen_by_a_dropped_wait_is_reported_by_the_next() {
        let (tx, rx) = mpsc::channel(1);
        let mut changes = Coalesced::new(rx, DEBOUNCE);
        notify(&tx);
        // Dropped half way through the quiet wait, after taking the notification.
        assert!(timeout(DEBOUNCE / 2, changes.next()).await.is_err());
        assert_eq!(changes.next().await, Some(()));
    }

    #[tokio::test(start_paused = true)]
    async fn no_sender_is_none() {
        let (tx, rx) = mpsc::channel(1);
        let mut changes = Coalesced::new(rx, DEBOUNCE);
        drop(tx);
        assert_eq!(changes.next().await, None);
    }

    #[tokio::test]
    async fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nope").join("tandem.toml");
        let err = ConfigWatcher::new(&path, DEBOUNCE).expect_err("must fail");
        assert!(matches!(err, WatchError::Dir { .. }), "{err}");
        let file = dir.path().join("file");
        fs::write(&file, "").expect("write");
        let err = ConfigWatcher::new(&file.join("tandem.toml"), DEBOUNCE).expect_err("not a dir");
        assert!(matches!(err, WatchError::Dir { .. }), "{err}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn kubernetes_style_symlink_swap_is_a_change() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        fs::create_dir(d.join("..v1")).expect("mkdir");
        fs::write(d.join("..v1/tandem.toml"), "a = 1\n").expect("write");
        symlink("..v1", d.join("..data")).expect("symlink");
        symlink("..data/tandem.toml", d.join("tandem.toml")).expect("symlink");
        let mut w = ConfigWatcher::new(&d.join("tandem.toml"), DEBOUNCE).expect("watch");

        // The target edited in place where it lives.
        fs::write(d.join("..v1/tandem.toml"), "a = 2\n").expect("write");
        expect_change(&mut w).await;

        // The kubelet's swap: new directory, new link, renamed over `..data`.
        fs::create_dir(d.join("..v2")).expect("mkdir");
        fs::write(d.join("..v2/tandem.toml"), "a = 3\n").expect("write");
        symlink("..v2", d.join("..data_tmp")).expect("symlink");
        fs::rename(d.join("..data_tmp"), d.join("..data")).expect("rename");
        expect_change(&mut w).await;
    }
}
