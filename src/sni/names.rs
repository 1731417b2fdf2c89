//! Server-name patterns of `[[service.route]]` and the table that maps a ClientHello's name to
//! a route.
//!
//! A pattern is an exact host name (`owa.example.com`) or `*.` and a host name
//! (`*.example.org`), where `*` stands for exactly one label: it matches `a.example.org`, not
//! `example.org` nor `a.b.example.org` (as a certificate wildcard does, RFC 6125 §6.4.3).
//! Names compare case-insensitively; a trailing dot in the client's name is ignored. Exact
//! names win over wildcards. Pure, no I/O; the lookup does not allocate.

use std::collections::HashMap;

use super::hello::MAX_NAME;

/// Why a `sni` pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("is empty")]
    Empty,
    #[error("is longer than 253 characters")]
    TooLong,
    #[error("has an empty label (two dots in a row, or a dot at an end)")]
    EmptyLabel,
    #[error("has a label longer than 63 characters")]
    LongLabel,
    #[error("has a character other than letters, digits, '-' and '_'")]
    BadCharacter,
    #[error("uses '*' other than as the whole first label (\"*.example.org\")")]
    BadWildcard,
}

/// A validated pattern, lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// This name only.
    Exact(String),
    /// One label, then this suffix (stored without the `*.`).
    Wildcard(String),
}

impl Pattern {
    /// Reads a pattern as written in the config.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        let lower = text.to_ascii_lowercase();
        match lower.strip_prefix("*.") {
            Some(suffix) => {
                check_name(suffix)?;
                Ok(Pattern::Wildcard(suffix.to_string()))
            }
            None => {
                check_name(&lower)?;
                Ok(Pattern::Exact(lower))
            }
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Exact(n) => f.write_str(n),
            Pattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

fn check_name(name: &str) -> Result<(), PatternError> {
    if name.is_empty() {
        return Err(PatternError::Empty);
    }
    if name.len() > 253 {
        return Err(PatternError::TooLong);
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(PatternError::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(PatternError::LongLabel);
        }
        if label.contains('*') {
            return Err(PatternError::BadWildcard);
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(PatternError::BadCharacter);
        }
    }
    Ok(())
}

/// Patterns to route indices; built once per config, read per connection.
#[derive(Debug, Clone, Default)]
pub struct NameTable {
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl NameTable {
    /// A table from `(pattern, route index)` pairs. Validation has refused duplicates; were
    /// one left, the first pattern would win.
    pub fn new<'a>(patterns: impl IntoIterator<Item = (&'a Pattern, usize)>) -> NameTable {
        let mut table = NameTable::default();
        for (pattern, route) in patterns {
            let map = match pattern {
                Pattern::Exact(_) => &mut table.exact,
                Pattern::Wildcard(_) => &mut table.wildcard,
            };
            let key = match pattern {
                Pattern::Exact(n) | Pattern::Wildcard(n) => n.clone(),
            };
            map.entry(key).or_insert(route);
        }
        table
    }

    /// The route of a client's server name; `None` when no pattern matches.
    pub fn lookup(&self, name: &str) -> Option<usize> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let mut buf = [0u8; MAX_NAME];
        let bytes = buf.get_mut(..name.len())?;
        bytes.copy_from_slice(name.as_bytes());
        bytes.make_ascii_lowercase();
        let lower = std::str::from_utf8(bytes).ok()?;
        if let Some(&route) = self.exact.get(lower) {
            return Some(route);
        }
        let (first, suffix) = lower.split_once('.')?;
        if first.is_empty() {
            return None;
        }
        self.wildcard.get(suffix).copied()
    }

    /// Whether no pattern is set.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_forms() {
        assert_eq!(
            Pattern::parse("OWA.Example.com"),
            Ok(Pattern::Exact("owa.example.com".into()))
        );
        assert_eq!(
            Pattern::parse("*.Example.org"),
            Ok(Pattern::Wildcard("example.org".into()))
        );
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert_eq!(Pattern::parse("*"), Err(PatternError::BadWildcard));
        assert_eq!(Pattern::parse("*."), Err(PatternError::Empty));
        assert_eq!(
            Pattern::parse("*example.org"),
            Err(PatternError::BadWildcard)
        );
        assert_eq!(Pattern::parse("a.*.org"), Err(PatternError::BadWildcard));
        assert_eq!(Pattern::parse("*.*.org"), Err(PatternError::BadWildcard));
        assert_eq!(Pattern::parse("a..org"), Err(PatternError::EmptyLabel));
        assert_eq!(Pattern::parse("a.org."), Err(PatternError::EmptyLabel));
        assert_eq!(Pattern::parse("a b.org"), Err(PatternError::BadCharacter));
        assert_eq!(
            Pattern::parse(&format!("{}.org", "a".repeat(64))),
            Err(PatternError::LongLabel)
        );
        assert_eq!(
            Pattern::parse("a.".repeat(128).trim_end_matches('.')),
            Err(PatternError::TooLong)
        );
    }

    #[test]
    fn lookup_exact_then_one_label_wildcard() {
        let p: Vec<Pattern> = ["owa.example.com", "*.example.org", "x.example.org"]
            .iter()
            .map(|t| Pattern::parse(t).expect("valid"))
            .collect();
        let t = NameTable::new(p.iter().zip([0, 1, 2]));
        assert_eq!(t.lookup("owa.example.com"), Some(0));
        assert_eq!(t.lookup("OWA.EXAMPLE.COM."), Some(0));
        assert_eq!(t.lookup("a.example.org"), Some(1));
        assert_eq!(t.lookup("X.example.org"), Some(2));
        assert_eq!(t.lookup("example.org"), None);
        assert_eq!(t.lookup("a.b.example.org"), None);
        assert_eq!(t.lookup(".example.org"), None);
        assert_eq!(t.lookup("other.example.com"), None);
        assert_eq!(t.lookup(&"a".repeat(300)), None);
    }
}
