//! `[access_log]`: where lines go, their format, and the progress interval.
//!
//! The path is checked here as far as the text goes (`"-"` or absolute). Whether its directory
//! exists is asked of the caller's probe (`tandem check` and `tandem run` pass the real file
//! system), so a typo in the directory is reported with its line and column before anything is
//! bound, rather than when the file is first opened. Whether tandem may write there is left to
//! the open at start or reload: `tandem check` often runs as another user.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Cx, PathKind};
use crate::config::raw::{RawAccessLog, RawLogFormat};
use crate::config::{AccessLog, LogFormat, LogTarget};

const PATH: &str = "access_log";

impl Cx<'_> {
    pub(super) fn access_log(&mut self, raw: RawAccessLog) -> Option<AccessLog> {
        let target = match &raw.path {
            None => Some(LogTarget::Stderr),
            Some(p) if p.get_ref() == "-" => Some(LogTarget::Stderr),
            Some(p) => {
                let path = Path::new(p.get_ref());
                match self.log_file_problem(path) {
                    Some(message) => {
                        self.problem(
                            p.span(),
                            PATH,
                            format!("path \"{}\" {message}", p.get_ref()),
                        );
                        None
                    }
                    None => Some(LogTarget::File(PathBuf::from(p.get_ref()))),
                }
            }
        };
        let format = match raw.format {
            None | Some(RawLogFormat::Json) => LogFormat::Json,
            Some(RawLogFormat::Text) => LogFormat::Text,
        };
        let interval = self.duration(&raw.interval, PATH, "interval", Duration::ZERO, true);
        Some(AccessLog {
            target: target?,
            format,
            interval: Some(interval?).filter(|d| !d.is_zero()),
        })
    }

    /// What is wrong with `path` as an access log file, worded to follow the path.
    fn log_file_problem(&self, path: &Path) -> Option<String> {
        // Relative paths would depend on the directory tandem was started from, which differs
        // between `tandem check` in a shell and the service.
        if !path.is_absolute() {
            return Some("must be \"-\" (stderr) or an absolute path".to_string());
        }
        if path.file_name().is_none() {
            return Some("names a directory, not a file".to_string());
        }
        let probe = self.probe?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        match probe(dir) {
            PathKind::Missing => Some(format!(
                "is in directory {}, which does not exist",
                dir.display()
            )),
            PathKind::Other => Some(format!("is in {}, which is not a directory", dir.display())),
            PathKind::Directory => match probe(path) {
                PathKind::Directory => Some("is a directory".to_string()),
                PathKind::Missing | PathKind::Other => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, parse_with};
    use super::*;

    const BASE: &str = "[[pool]]\nname = \"p\"\nmembers = [{ addr = \"127.0.0.1:1\" }]\n\
                        [[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n";

    fn with(table: &str) -> String {
        format!("{BASE}[access_log]\n{table}")
    }

    /// A file system with only `/var/log` (a directory) and `/var/log/tandem` (a directory).
    fn probe(path: &Path) -> PathKind {
        match path.to_str() {
            Some("/" | "/var" | "/var/log" | "/var/log/tandem") => PathKind::Directory,
            Some("/etc/passwd") => PathKind::Other,
            _ => PathKind::Missing,
        }
    }

    fn problems(text: &str) -> String {
        parse_with(text, "t.toml", Some(&probe))
            .expect_err("invalid")
            .to_string()
    }

    #[test]
    fn defaults_are_stderr_json_and_no_progress() {
        let c = parse(&with(""), "t.toml").expect("valid");
        assert_eq!(
            c.access_log,
            Some(AccessLog {
                target: LogTarget::Stderr,
                format: LogFormat::Json,
                interval: None,
            })
        );
        assert_eq!(parse(BASE, "t.toml").expect("valid").access_log, None);
    }

    #[test]
    fn every_key_is_read() {
        let text =
            with("path = \"/var/log/tandem/access.log\"\nformat = \"text\"\ninterval = \"5m\"\n");
        let c = parse_with(&text, "t.toml", Some(&probe)).expect("valid");
        assert_eq!(
            c.access_log,
            Some(AccessLog {
                target: LogTarget::File("/var/log/tandem/access.log".into()),
                format: LogFormat::Text,
                interval: Some(Duration::from_secs(300)),
            })
        );
        let zero = parse(&with("interval = \"0s\"\n"), "t.toml").expect("valid");
        assert_eq!(zero.access_log.and_then(|a| a.interval), None);
    }

    #[test]
    fn a_missing_directory_is_reported_where_the_path_is() {
        let p = problems(&with("path = \"/var/log/tandme/access.log\"\n"));
        assert_eq!(
            p,
            "t.toml:9:8 access_log: path \"/var/log/tandme/access.log\" is in directory \
             /var/log/tandme, which does not exist"
        );
        // Without a probe (pure parsing) the directory is not looked at.
        assert!(parse(&with("path = \"/var/log/tandme/access.log\"\n"), "t.toml").is_ok());
    }

    #[test]
    fn bad_paths_formats_and_intervals_are_reported_with_their_place() {
        let p = problems(&with("path = \"access.log\"\n"));
        assert_eq!(
            p,
            "t.toml:9:8 access_log: path \"access.log\" must be \"-\" (stderr) or an absolute path"
        );
        let p = problems(&with("format = \"xml\"\n"));
        assert_eq!(
            p,
            "t.toml:9:10 access_log: format: unknown variant `xml`, expected `json` or `text`"
        );
        // Problems in values serde reads (strings) are all reported.
        let p = problems(&with("interval = \"often\"\npath = \"/var/log/tandem\"\n"));
        assert!(
            p.contains("t.toml:9:12 access_log: interval \"often\" is not a duration"),
            "{p}"
        );
        assert!(
            p.contains("t.toml:10:8 access_log: path \"/var/log/tandem\" is a directory"),
            "{p}"
        );
        let p = problems(&with("path = \"/etc/passwd/x.log\"\n"));
        assert!(
            p.contains("is in /etc/passwd, which is not a directory"),
            "{p}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_place() {
        let p = problems(&with("path = \"-\"\nformt = \"text\"\n"));
        assert!(
            p.starts_with("t.toml:10:1 access_log: unknown field `formt`"),
            "{p}"
        );
    }
}
