//! `tandem member set` and `tandem member list`: an operator's member states, kept in the config
//! file, which stays the one truth.
//!
//! Setting a state is three steps, each in its own part:
//! - [`set_state`] edits the config text (pure: no I/O). Only the member's `state` value
//!   changes, or, when the member has no `state` key, one `state = "..."` is added to its table;
//!   every comment and every other byte stays. The result is validated exactly like `tandem
//!   check` before anyone sees it.
//! - [`file::replace`] writes the new text atomically over the file, keeping its permissions
//!   and owner, and refuses read-only files.
//! - [`reload::trigger`] asks the running tandem to reload: `POST /reload` on its admin API,
//!   else SIGHUP.
//!
//! [`list`] renders the configured members, with live health when a tandem answers.
//!
//! This module never touches the running app directly: it talks to it only through the admin
//! API or a signal, like an operator would.

pub mod file;
pub mod reload;

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;
use toml_edit::{Decor, DocumentMut, InlineTable, Item, Key, Table, TableLike};

use crate::config::{self, Config, ConfigProblems, MemberAddr, OperatorState};

/// Why a member's state could not be set.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// The file as it is has problems (a syntax error included); nothing is edited until it is
    /// fixed, since the result could not be checked to be what the operator meant.
    #[error("{file} has problems; fix them first (tandem check -c {file}):\n{problems}")]
    Invalid {
        file: String,
        problems: ConfigProblems,
    },
    /// The edit would make the config invalid; nothing is written.
    #[error("the edited config would have problems, nothing written:\n{problems}")]
    WouldBeInvalid { problems: ConfigProblems },
    #[error("no pool named \"{pool}\" (pools: {})", known.join(", "))]
    UnknownPool { pool: String, known: Vec<String> },
    #[error("pool \"{pool}\" has no member {addr} (members: {})", members.join(", "))]
    UnknownMember {
        pool: String,
        addr: String,
        members: Vec<String>,
    },
    #[error(
        "{addr} is ambiguous in pool \"{pool}\": it matches {}; give the port",
        candidates.join(", ")
    )]
    Ambiguous {
        pool: String,
        addr: String,
        candidates: Vec<String>,
    },
    #[error(
        "\"{addr}\" is not a member address (an IP or IP:port; IPv6 with a port is [addr]:port)"
    )]
    BadAddr { addr: String },
    /// The document has a shape the validator accepts but the editor does not follow (it
    /// should not happen: both read the same TOML).
    #[error("cannot find pool \"{pool}\" member {addr} in the file's text: {why}")]
    Locate {
        pool: String,
        addr: String,
        why: String,
    },
    #[error(transparent)]
    File(#[from] file::FileError),
}

/// The outcome of [`set_state`].
#[derive(Debug, Clone, PartialEq)]
pub struct Edit {
    /// The new config text (equal to the old one when nothing changed).
    pub text: String,
    /// The new text, validated: where the running tandem's admin API is, for the reload.
    pub config: Config,
    /// The member as the config names it (its canonical address).
    pub member: MemberAddr,
    /// Its state before the edit.
    pub from: OperatorState,
    /// Its state now.
    pub to: OperatorState,
}

impl Edit {
    /// Whether the text changed (false when the member already had the state).
    pub fn changed(&self) -> bool {
        self.from != self.to
    }
}

/// Sets the operator state of member `addr` of `pool` in the config `text` (`file` names it in
/// messages) and returns the new text, validated like `tandem check`.
///
/// `addr` is matched against the canonical member addresses the validator produces: `10.0.0.1`
/// and `10.0.0.1:5061` are different members. An `addr` without a port also matches a member
/// with the same IP and a port when that member is the only one with that IP.
///
/// When the member has a `state` key only its value changes (its comment and spacing stay);
/// `up` on a member without a `state` key changes nothing, since an absent state is `up`.
/// Otherwise `state = "..."` is appended to the member's table, inline (`{ addr = ..., state =
/// "drain" }`) or standard (`[[pool.members]]`), indented like the member's other keys.
pub fn set_state(
    text: &str,
    file: &str,
    pool: &str,
    addr: &str,
    state: OperatorState,
) -> Result<Edit, MemberError> {
    let old = config::parse(text, file).map_err(|problems| MemberError::Invalid {
        file: file.to_string(),
        problems,
    })?;
    let (index, member) = find_member(&old, pool, addr)?;
    let from = member.state;
    let locate = |why: String| MemberError::Locate {
        pool: pool.to_string(),
        addr: member.addr.to_string(),
        why,
    };
    let mut doc: DocumentMut = text.parse().map_err(|e| locate(format!("{e}")))?;
    let mut table = member_table(&mut doc, pool, index).map_err(locate)?;
    // The validator matched this entry by position; make sure the text agrees.
    let written = table
        .like()
        .get("addr")
        .and_then(Item::as_str)
        .and_then(parse_addr);
    if written != Some(member.addr) {
        return Err(locate(format!("entry {} has another addr", index + 1)));
    }
    let has_key = table.like().contains_key("state");
    if from == state || (state == OperatorState::Up && !has_key) {
        // Already so, or `up` by absence: the file stays byte for byte as it is.
        return Ok(Edit {
            text: text.to_string(),
            config: old.clone(),
            member: member.addr,
            from,
            to: state,
        });
    }
    write_state(&mut table, state);

    let new_text = doc.to_string();
    let new = config::parse(&new_text, file)
        .map_err(|problems| MemberError::WouldBeInvalid { problems })?;
    // Belt and braces: the edit must have changed exactly what was asked.
    let now = new
        .pool(pool)
        .and_then(|p| p.members.get(index))
        .map(|m| (m.addr, m.state));
    if now != Some((member.addr, state)) {
        return Err(locate("the edited text does not read back as asked".into()));
    }
    Ok(Edit {
        text: new_text,
        config: new,
        member: member.addr,
        from,
        to: state,
    })
}

/// [`set_state`] on the config file at `path`, written back (atomically, see [`mod@file`]) only
/// when the text changed.
pub fn set_in_file(
    path: &Path,
    pool: &str,
    addr: &str,
    state: OperatorState,
) -> Result<Edit, MemberError> {
    let original = file::read(path)?;
    let edit = set_state(
        &original.text,
        &path.display().to_string(),
        pool,
        addr,
        state,
    )?;
    if edit.changed() {
        file::replace(&original, &edit.text)?;
    }
    Ok(edit)
}

/// The member of `pool` that `addr` names, with its position in the pool.
fn find_member<'c>(
    config: &'c Config,
    pool: &str,
    addr: &str,
) -> Result<(usize, &'c config::Member), MemberError> {
    let Some(p) = config.pool(pool) else {
        return Err(MemberError::UnknownPool {
            pool: pool.to_string(),
            known: config.pools.iter().map(|p| p.name.clone()).collect(),
        });
    };
    let wanted = parse_addr(addr).ok_or_else(|| MemberError::BadAddr {
        addr: addr.to_string(),
    })?;
    if let Some(found) = p.members.iter().enumerate().find(|(_, m)| m.addr == wanted) {
        return Ok(found);
    }
    let same_ip: Vec<_> = if wanted.port.is_none() {
        p.members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.addr.ip == wanted.ip)
            .collect()
    } else {
        // A port names one member exactly: `10.0.0.1:5061` is not taken to mean `10.0.0.1`,
        // whose port depends on the service in front of the pool.
        Vec::new()
    };
    match same_ip.as_slice() {
        [one] => Ok(*one),
        [] => Err(MemberError::UnknownMember {
            pool: pool.to_string(),
            addr: wanted.to_string(),
            members: p.members.iter().map(|m| m.addr.to_string()).collect(),
        }),
        many => Err(MemberError::Ambiguous {
            pool: pool.to_string(),
            addr: wanted.to_string(),
            candidates: many.iter().map(|(_, m)| m.addr.to_string()).collect(),
        }),
    }
}

/// A member address as the config accepts it (see [`MemberAddr::parse`]).
pub fn parse_addr(s: &str) -> Option<MemberAddr> {
    MemberAddr::parse(s).ok()
}

/// A member's table, as written: `{ addr = .. }` in a `members = [..]` array, or a
/// `[[pool.members]]` table.
enum MemberTable<'d> {
    Inline(&'d mut InlineTable),
    Standard(&'d mut Table),
}

impl MemberTable<'_> {
    fn like(&mut self) -> &mut dyn TableLike {
        match self {
            MemberTable::Inline(t) => *t,
            MemberTable::Standard(t) => *t,
        }
    }
}

/// The table of member `index` of `pool`: `[[pool]]` or `pool = [{..}]`, each with `members =
/// [{..}]` or `[[pool.members]]`.
fn member_table<'d>(
    doc: &'d mut DocumentMut,
    pool: &str,
    index: usize,
) -> Result<MemberTable<'d>, String> {
    let pools = doc
        .get_mut("pool")
        .ok_or_else(|| "no pool key".to_string())?;
    let pool_table = entries(pools)
        .into_iter()
        .find_map(|mut t| (t.like().get("name").and_then(Item::as_str) == Some(pool)).then_some(t))
        .ok_or_else(|| format!("no pool entry named \"{pool}\""))?;
    let members = pool_table
        .into_like()
        .get_mut("members")
        .ok_or_else(|| "the pool has no members key".to_string())?;
    entries(members)
        .into_iter()
        .nth(index)
        .ok_or_else(|| format!("the pool has no entry {}", index + 1))
}

impl<'d> MemberTable<'d> {
    fn into_like(self) -> &'d mut dyn TableLike {
        match self {
            MemberTable::Inline(t) => t,
            MemberTable::Standard(t) => t,
        }
    }
}

/// The tables of an array of tables, whichever way it is written.
fn entries(item: &mut Item) -> Vec<MemberTable<'_>> {
    match item {
        Item::ArrayOfTables(a) => a.iter_mut().map(MemberTable::Standard).collect(),
        Item::Value(toml_edit::Value::Array(a)) => a
            .iter_mut()
            .filter_map(|v| v.as_inline_table_mut())
            .map(MemberTable::Inline)
            .collect(),
        _ => Vec::new(),
    }
}

/// Sets `state` in a member's table with the least change to the text.
fn write_state(table: &mut MemberTable<'_>, state: OperatorState) {
    let mut value = toml_edit::Value::from(state.as_str());
    if let Some(old) = table.like().get_mut("state").and_then(Item::as_value_mut) {
        // The old value's surroundings (the space before it, a trailing comment) stay.
        *value.decor_mut() = old.decor().clone();
        *old = value;
        return;
    }
    match table {
        MemberTable::Inline(t) => {
            // The space before `}` belongs to the last value; it moves to the new last one, so
            // `{ addr = "a" }` becomes `{ addr = "a", state = "drain" }`.
            let closing = t
                .iter_mut()
                .last()
                .map(|(_, last)| {
                    let suffix = raw(last.decor().suffix());
                    last.decor_mut().set_suffix("");
                    suffix
                })
                .unwrap_or_else(|| " ".to_string());
            *value.decor_mut() = Decor::new(" ", closing);
            let key = Key::new("state").with_leaf_decor(Decor::new(" ", " "));
            t.insert_formatted(&key, value);
        }
        MemberTable::Standard(t) => {
            // A new line after the last key, indented like the `addr` line.
            let indent = t
                .key("addr")
                .map(|k| raw(k.leaf_decor().prefix()))
                .map(|p| p.rsplit('\n').next().unwrap_or("").to_string())
                .filter(|p| p.chars().all(|c| c == ' ' || c == '\t'))
                .unwrap_or_default();
            *value.decor_mut() = Decor::new(" ", "");
            let key = Key::new("state").with_leaf_decor(Decor::new(indent, " "));
            t.insert_formatted(&key, Item::Value(value));
        }
    }
}

fn raw(s: Option<&toml_edit::RawString>) -> String {
    s.and_then(|r| r.as_str()).unwrap_or("").to_string()
}

/// `tandem member list`: each pool's members with their configured weight and state and, when
/// `status` (a running tandem's `/status`) is given, its live state and health; `-` where
/// unknown. A live state that differs from the file's (an edit not reloaded yet) shows as
/// `drain (running: up)`.
pub fn list(config: &Config, status: Option<&Value>) -> String {
    let mut rows = vec![vec![
        "POOL".to_string(),
        "MEMBER".to_string(),
        "WEIGHT".to_string(),
        "STATE".to_string(),
        "HEALTH".to_string(),
    ]];
    for pool in &config.pools {
        let live_pool = status.and_then(|s| {
            s["pools"]
                .as_array()?
                .iter()
                .find(|p| p["name"].as_str() == Some(pool.name.as_str()))
        });
        for m in &pool.members {
            let addr = m.addr.to_string();
            let live = live_pool.and_then(|p| {
                p["members"]
                    .as_array()?
                    .iter()
                    .find(|l| l["addr"].as_str() == Some(addr.as_str()))
            });
            let configured = m.state.as_str();
            let state = match live.and_then(|l| l["state"].as_str()) {
                Some(running) if running != configured => {
                    format!("{configured} (running: {running})")
                }
                _ => configured.to_string(),
            };
            let health = live
                .and_then(|l| l["health"].as_str())
                .unwrap_or("-")
                .to_string();
            rows.push(vec![
                pool.name.clone(),
                addr,
                m.weight.to_string(),
                state,
                health,
            ]);
        }
    }
    let mut out = String::new();
    crate::admin::client::table(&mut out, &rows);
    if status.is_none() {
        let _ = writeln!(out, "(no running tandem answered: health unknown)");
    }
    out
}

#[cfg(test)]
mod tests;
