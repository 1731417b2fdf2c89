//! The files a valid config names, read when it loads: today the admin API's TLS certificate,
//! key and client CA. Each is loaded exactly as the admin API will load it, so `tandem check`
//! and a reload reject a file that would not serve, and the problem points at the key naming it.
//!
//! Kept out of [`super::validate`], which performs no I/O (the fuzz target feeds it arbitrary
//! text, and a path such as `/dev/zero` must not be read there).

use toml::de::{DeTable, DeValue};

use super::validate::line_col;
use super::{Config, ConfigProblem};
use crate::tls;

/// Problems with the files `config` (parsed from `text`, named `file`) refers to.
pub(super) fn check(text: &str, file: &str, config: &Config) -> Vec<ConfigProblem> {
    let Some(admin_tls) = config.admin.as_ref().and_then(|a| a.tls.as_ref()) else {
        return Vec::new();
    };
    match tls::server_config(
        &admin_tls.cert,
        &admin_tls.key,
        admin_tls.client_ca.as_deref(),
    ) {
        Ok(_) => Vec::new(),
        Err(e) => {
            let key = e.role().admin_key();
            let (line, column) = locate(text, key);
            vec![ConfigProblem {
                file: file.to_string(),
                line,
                column,
                path: "admin".to_string(),
                message: format!("{key}: {e}"),
            }]
        }
    }
}

/// Line and column of `[admin] key`'s value in `text` ((0, 0) if it cannot be found, which a
/// text that parsed into a config with that key does not allow).
fn locate(text: &str, key: &str) -> (usize, usize) {
    let Ok(doc) = DeTable::parse(text) else {
        return (0, 0);
    };
    let span = doc
        .get_ref()
        .get("admin")
        .and_then(|admin| match admin.get_ref() {
            DeValue::Table(table) => table.get(key).map(|v| v.span()),
            _ => None,
        });
    match span {
        Some(span) => line_col(text, span.start),
        None => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "[[pool]]\nname = \"p\"\nmembers = [{ addr = \"127.0.0.1:80\" }]\n\
                           [[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n";

    #[test]
    fn a_missing_key_file_is_reported_at_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("admin.crt");
        std::fs::write(
            &cert,
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
                .expect("cert")
                .cert
                .pem(),
        )
        .expect("write");
        let key = dir.path().join("missing.key");
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{SERVICE}",
            cert.display(),
            key.display()
        );
        let config = super::super::parse(&text, "t.toml").expect("parses");
        let problems = check(&text, "t.toml", &config);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let p = &problems[0];
        assert_eq!((p.line, p.column), (4, 11), "{p}");
        assert!(
            p.to_string()
                .starts_with("t.toml:4:11 admin: tls_key: cannot read "),
            "{p}"
        );
    }

    #[test]
    fn no_tls_no_files_read() {
        let text = format!("[admin]\n{SERVICE}");
        let config = super::super::parse(&text, "t.toml").expect("parses");
        assert!(check(&text, "t.toml", &config).is_empty());
    }
}
