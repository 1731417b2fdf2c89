//! Replacing the config file with its edited text: all or nothing, same permissions, same owner.
//!
//! The new text goes to a temporary file in the same directory (so the rename stays on one
//! file system), is flushed to disk, and is renamed over the old name; the directory is then
//! flushed so the rename itself survives a crash. A reader (the running tandem's file watcher, a
//! `tandem check`) therefore sees the old file or the new one, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// Why the config file could not be read or replaced. Nothing was changed in any case.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file has no write permission bit, or cannot be opened for writing: whoever made it
    /// read-only (an operator, configuration management, a read-only mount) meant it.
    #[error("{} is read-only ({reason}); nothing written", path.display())]
    ReadOnly { path: PathBuf, reason: String },
    /// Replacing a file means creating one beside it, which needs a writable directory.
    #[error(
        "cannot write in {} ({reason}), which replacing the file needs; nothing written",
        dir.display()
    )]
    DirReadOnly { dir: PathBuf, reason: String },
    #[error(
        "cannot give the new {} its owner {uid}:{gid} ({source}); run as root or as its owner; \
         nothing written",
        path.display()
    )]
    Owner {
        path: PathBuf,
        uid: u32,
        gid: u32,
        #[source]
        source: io::Error,
    },
    /// Someone else changed the file between our read and our write; their change wins.
    #[error("{} changed while it was being edited; nothing written, try again", path.display())]
    Changed { path: PathBuf },
    #[error("cannot write {}: {source}; nothing written", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The file to edit: the path a symlink points at (so the link stays a link), with its text.
#[derive(Debug)]
pub struct Original {
    /// The real file (symlinks resolved).
    pub path: PathBuf,
    pub text: String,
}

/// Reads the config file at `path`, following symlinks to the file that holds it.
pub fn read(path: &Path) -> Result<Original, FileError> {
    let err = |source| FileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let real = fs::canonicalize(path).map_err(err)?;
    let text = fs::read_to_string(&real).map_err(err)?;
    Ok(Original { path: real, text })
}

/// Replaces `original` with `text`, keeping its permissions and owner. Refuses when the file is
/// read-only or was changed since it was read.
pub fn replace(original: &Original, text: &str) -> Result<(), FileError> {
    let path = &original.path;
    let meta = fs::metadata(path).map_err(|source| FileError::Read {
        path: path.clone(),
        source,
    })?;
    writable(path, &meta)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir_meta = fs::metadata(dir).map_err(|source| FileError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    if dir_meta.permissions().readonly() {
        // Root could create the file anyway; a directory without write bits is a statement.
        return Err(FileError::DirReadOnly {
            dir: dir.to_path_buf(),
            reason: "no write permission".into(),
        });
    }

    let (temp_path, temp) = create_temp(dir, path)?;
    let result = fill(&temp, &temp_path, text, &meta, path).and_then(|()| {
        // The narrowest window we can give a concurrent editor: compare just before renaming.
        match fs::read_to_string(path) {
            Ok(now) if now == original.text => Ok(()),
            _ => Err(FileError::Changed { path: path.clone() }),
        }
    });
    let result = result.and_then(|()| {
        fs::rename(&temp_path, path).map_err(|source| FileError::Write {
            path: path.clone(),
            source,
        })
    });
    if result.is_err() {
        let _ = fs::remove_file(&temp_path);
        return result;
    }
    // Without this the rename may be lost in a crash even though the data is on disk. A
    // failure here is not worth undoing a rename that has happened.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Refuses a file nobody may write (mode bits), or that this process cannot open for writing
/// (another owner, an immutable attribute, a read-only mount).
fn writable(path: &Path, meta: &fs::Metadata) -> Result<(), FileError> {
    if meta.permissions().readonly() {
        // Checked by mode because root may write anyway, and would then defeat the point.
        return Err(FileError::ReadOnly {
            path: path.to_path_buf(),
            reason: format!("mode {:o}", meta.mode() & 0o7777),
        });
    }
    // Opening without truncating changes nothing; it asks the kernel the real question.
    OpenOptions::new()
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|e| FileError::ReadOnly {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// A new, exclusive temporary file beside `path`: `.NAME.tandem-PID-N.tmp`.
fn create_temp(dir: &Path, path: &Path) -> Result<(PathBuf, File), FileError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let mut last = None;
    // A few names, in case a crashed earlier run left one behind.
    for n in 0..8 {
        let temp = dir.join(format!(".{name}.tandem-{}-{n}.tmp", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(f) => return Ok((temp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => {
                return Err(FileError::DirReadOnly {
                    dir: dir.to_path_buf(),
                    reason: e.to_string(),
                });
            }
        }
    }
    Err(FileError::DirReadOnly {
        dir: dir.to_path_buf(),
        reason: last.map_or_else(|| "no free temporary name".into(), |e| e.to_string()),
    })
}

/// Writes `text` into the temporary file, gives it the original's mode and owner, and flushes
/// it to disk.
fn fill(
    temp: &File,
    temp_path: &Path,
    text: &str,
    meta: &fs::Metadata,
    path: &Path,
) -> Result<(), FileError> {
    let write_err = |source| FileError::Write {
        path: temp_path.to_path_buf(),
        source,
    };
    let mut w = temp;
    w.write_all(text.as_bytes()).map_err(write_err)?;
    temp.set_permissions(meta.permissions())
        .map_err(write_err)?;
    let ours = temp.metadata().map_err(write_err)?;
    if (ours.uid(), ours.gid()) != (meta.uid(), meta.gid()) {
        std::os::unix::fs::fchown(temp, Some(meta.uid()), Some(meta.gid())).map_err(|source| {
            FileError::Owner {
                path: path.to_path_buf(),
                uid: meta.uid(),
                gid: meta.gid(),
                source,
            }
        })?;
        // chown clears set-id bits; put the mode back.
        temp.set_permissions(meta.permissions())
            .map_err(write_err)?;
    }
    temp.sync_all().map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("tandem.toml");
        fs::write(&path, text).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn replaces_the_text_and_keeps_the_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = file(dir.path(), "old\n", 0o640);
        let original = read(&path).expect("read");
        replace(&original, "new\n").expect("replaced");
        assert_eq!(fs::read_to_string(&path).expect("read"), "new\n");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec!["tandem.toml"]);
    }

    #[test]
    fn a_symlink_stays_a_link_to_the_edited_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = file(dir.path(), "old\n", 0o644);
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let original = read(&link).expect("read");
        replace(&original, "new\n").expect("replaced");
        assert!(fs::symlink_metadata(&link).expect("meta").is_symlink());
        assert_eq!(fs::read_to_string(&real).expect("read"), "new\n");
    }

    #[test]
    fn a_read_only_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = file(dir.path(), "old\n", 0o444);
        let original = read(&path).expect("read");
        let e = replace(&original, "new\n").expect_err("read-only");
        assert!(matches!(e, FileError::ReadOnly { .. }), "{e}");
        assert!(e.to_string().contains("is read-only (mode 444)"), "{e}");
        assert_eq!(fs::read_to_string(&path).expect("read"), "old\n");
    }

    #[test]
    fn a_read_only_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = file(dir.path(), "old\n", 0o644);
        let original = read(&path).expect("read");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o555)).expect("chmod");
        let e = replace(&original, "new\n").expect_err("read-only dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod back");
        assert!(matches!(e, FileError::DirReadOnly { .. }), "{e}");
        assert_eq!(fs::read_to_string(&path).expect("read"), "old\n");
    }

    #[test]
    fn a_file_changed_since_it_was_read_is_not_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = file(dir.path(), "old\n", 0o644);
        let original = read(&path).expect("read");
        fs::write(&path, "theirs\n").expect("concurrent edit");
        let e = replace(&original, "ours\n").expect_err("changed");
        assert!(matches!(e, FileError::Changed { .. }), "{e}");
        assert_eq!(fs::read_to_string(&path).expect("read"), "theirs\n");
    }

    #[test]
    fn a_missing_file_is_a_read_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = read(&dir.path().join("nope.toml")).expect_err("missing");
        assert!(e.to_string().starts_with("cannot read "), "{e}");
    }
}
