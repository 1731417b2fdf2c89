//! Tests of the pure edit: what changes in the text is exactly the state, nothing else.

use super::*;

/// A config as operators keep them: comments everywhere, aligned values, odd spacing, both
/// member forms.
const COMMENTED: &str = r#"# tandem.toml -- Front End pool pair
# (owned by the Lync team; ask before editing)

[admin]
listen = "127.0.0.1:9900"   # loopback only

# --- site 1 ---------------------------------------------------------
[[pool]]
name = "fe-dc1"   # primary site
members = [
  # rack A
  { addr = "10.1.0.11" },                          # fe01
  { addr = "10.1.0.12", weight = 2 },              # fe02, bigger box
  { addr = "10.1.0.13",  state = 'drain'  },       # fe03: KB5001 pending
  {addr="10.1.0.14:5062"},                         # fe04, odd port
]
  [[pool.check]]
  kind = "tcp"        # cheap
  port = 5061
  interval = "2s"

# --- site 2 ---------------------------------------------------------
[[pool]]
name = "fe-dc2"

  [[pool.members]]
  addr = "10.2.0.11"   # fe11
  weight = 1           # default, written for clarity

  [[pool.members]]
  # fe12 is being rebuilt
  addr = "10.2.0.12"
  state = "maint"      # ticket 4711

  [[pool.members]]
  addr = "10.2.0.13:5061"

  [[pool.members]]
  addr = "10.2.0.13:5062"

[[service]]
name = "fe-sip"
listen = "0.0.0.0:5061"
pool = "fe-dc1"
backup_pool = "fe-dc2"   # the pair
"#;

/// The part of `new` that differs from `old`: (old middle, new middle) after removing the
/// longest common prefix and suffix.
fn diff<'a>(old: &'a str, new: &'a str) -> (&'a str, &'a str) {
    let prefix = old
        .char_indices()
        .zip(new.chars())
        .find(|((_, a), b)| a != b)
        .map_or(old.len().min(new.len()), |((i, _), _)| i);
    let (o, n) = (&old[prefix..], &new[prefix..]);
    let suffix = o
        .chars()
        .rev()
        .zip(n.chars().rev())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a.len_utf8())
        .sum::<usize>();
    (&o[..o.len() - suffix], &n[..n.len() - suffix])
}

fn set(text: &str, pool: &str, addr: &str, state: OperatorState) -> Result<Edit, MemberError> {
    set_state(text, "tandem.toml", pool, addr, state)
}

fn state_of(text: &str, pool: &str, addr: &str) -> OperatorState {
    let config = config::parse(text, "t.toml").expect("valid");
    let wanted = parse_addr(addr).expect("addr");
    config
        .pool(pool)
        .and_then(|p| p.members.iter().find(|m| m.addr == wanted))
        .map(|m| m.state)
        .expect("member")
}

#[test]
fn changing_an_existing_state_changes_only_the_value() {
    let edit = set(COMMENTED, "fe-dc1", "10.1.0.13", OperatorState::Maint).expect("edited");
    assert_eq!(diff(COMMENTED, &edit.text), ("'drain'", "\"maint\""));
    assert_eq!(
        (edit.from, edit.to),
        (OperatorState::Drain, OperatorState::Maint)
    );
    assert!(edit.changed());

    let edit = set(COMMENTED, "fe-dc2", "10.2.0.12", OperatorState::Drain).expect("edited");
    assert_eq!(diff(COMMENTED, &edit.text), ("maint", "drain"));
    // Its comment stays on its line.
    assert!(
        edit.text
            .contains("  state = \"drain\"      # ticket 4711\n")
    );
}

#[test]
fn up_sets_an_existing_state_and_leaves_an_absent_one_absent() {
    // Setting keeps the value where the operator (and their comment) put it.
    let edit = set(COMMENTED, "fe-dc2", "10.2.0.12", OperatorState::Up).expect("edited");
    assert_eq!(diff(COMMENTED, &edit.text), ("maint", "up"));
    assert_eq!(
        state_of(&edit.text, "fe-dc2", "10.2.0.12"),
        OperatorState::Up
    );

    // No key means up already: nothing to write.
    let edit = set(COMMENTED, "fe-dc1", "10.1.0.11", OperatorState::Up).expect("no-op");
    assert!(!edit.changed());
    assert_eq!(edit.text, COMMENTED);
}

#[test]
fn the_same_state_again_changes_nothing() {
    let edit = set(COMMENTED, "fe-dc1", "10.1.0.13", OperatorState::Drain).expect("no-op");
    assert!(!edit.changed());
    assert_eq!(edit.text, COMMENTED);
}

#[test]
fn a_state_is_added_into_an_inline_table() {
    let edit = set(COMMENTED, "fe-dc1", "10.1.0.12", OperatorState::Drain).expect("edited");
    assert_eq!(diff(COMMENTED, &edit.text), ("", ", state = \"drain\""));
    assert!(edit.text.contains(
        "  { addr = \"10.1.0.12\", weight = 2, state = \"drain\" },              # fe02, bigger box\n"
    ));
    assert_eq!(
        state_of(&edit.text, "fe-dc1", "10.1.0.12"),
        OperatorState::Drain
    );

    // Without spaces inside the braces, none are invented before the closing one.
    let edit = set(COMMENTED, "fe-dc1", "10.1.0.14:5062", OperatorState::Maint).expect("edited");
    assert!(
        edit.text
            .contains("  {addr=\"10.1.0.14:5062\", state = \"maint\"},"),
        "{}",
        edit.text
    );
}

#[test]
fn a_state_is_added_into_a_member_table_with_its_indentation() {
    let edit = set(COMMENTED, "fe-dc2", "10.2.0.11", OperatorState::Drain).expect("edited");
    assert_eq!(diff(COMMENTED, &edit.text), ("", "  state = \"drain\"\n"));
    assert!(edit.text.contains(
        "  addr = \"10.2.0.11\"   # fe11\n  weight = 1           # default, written for clarity\n  state = \"drain\"\n\n  [[pool.members]]\n"
    ));
    assert_eq!(
        state_of(&edit.text, "fe-dc2", "10.2.0.11"),
        OperatorState::Drain
    );
}

#[test]
fn a_one_line_config_gets_a_state() {
    let text = "[[pool]]\nname = \"p\"\nmembers = [{ addr = \"127.0.0.1:80\" }]\n\n\
                [[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n";
    let edit = set(text, "p", "127.0.0.1", OperatorState::Drain).expect("edited");
    assert!(
        edit.text
            .contains("members = [{ addr = \"127.0.0.1:80\", state = \"drain\" }]\n")
    );
}

#[test]
fn a_port_in_the_argument_must_match_exactly() {
    let edit = set(COMMENTED, "fe-dc1", "10.1.0.14:5062", OperatorState::Drain).expect("edited");
    assert_eq!(edit.member.to_string(), "10.1.0.14:5062");
    // The member without a port takes the service's; a port does not name it.
    let e = set(COMMENTED, "fe-dc1", "10.1.0.11:5061", OperatorState::Drain).expect_err("port");
    assert_eq!(
        e.to_string(),
        "pool \"fe-dc1\" has no member 10.1.0.11:5061 (members: 10.1.0.11, 10.1.0.12, \
         10.1.0.13, 10.1.0.14:5062)"
    );
}

#[test]
fn an_address_without_a_port_matches_a_unique_member_with_one() {
    let edit = set(COMMENTED, "fe-dc1", "10.1.0.14", OperatorState::Drain).expect("edited");
    assert_eq!(edit.member.to_string(), "10.1.0.14:5062");
    // Written differently but the same address: matched by value, not by text.
    let text = COMMENTED.replace("10.1.0.11", "[::ffff:10.1.0.11]");
    assert!(set(&text, "fe-dc1", "[::ffff:10.1.0.11]", OperatorState::Drain).is_ok());
}

#[test]
fn an_address_matching_several_members_is_ambiguous() {
    let e = set(COMMENTED, "fe-dc2", "10.2.0.13", OperatorState::Drain).expect_err("ambiguous");
    assert!(matches!(e, MemberError::Ambiguous { .. }));
    assert_eq!(
        e.to_string(),
        "10.2.0.13 is ambiguous in pool \"fe-dc2\": it matches 10.2.0.13:5061, 10.2.0.13:5062; \
         give the port"
    );
    let edit = set(COMMENTED, "fe-dc2", "10.2.0.13:5062", OperatorState::Drain).expect("exact");
    assert_eq!(diff(COMMENTED, &edit.text), ("", "  state = \"drain\"\n"));
}

#[test]
fn unknown_pools_and_members_are_named() {
    let e = set(COMMENTED, "fe-dc3", "10.1.0.11", OperatorState::Drain).expect_err("pool");
    assert_eq!(
        e.to_string(),
        "no pool named \"fe-dc3\" (pools: fe-dc1, fe-dc2)"
    );
    let e = set(COMMENTED, "fe-dc1", "10.2.0.11", OperatorState::Drain).expect_err("member");
    assert!(matches!(e, MemberError::UnknownMember { .. }), "{e}");
    let e = set(
        COMMENTED,
        "fe-dc1",
        "fe01.example.com",
        OperatorState::Drain,
    )
    .expect_err("name");
    assert!(matches!(e, MemberError::BadAddr { .. }), "{e}");
}

#[test]
fn a_file_that_does_not_parse_is_not_edited() {
    let broken = COMMENTED.replace("name = \"fe-dc2\"", "name = \"fe-dc2");
    let e = set(&broken, "fe-dc1", "10.1.0.11", OperatorState::Drain).expect_err("broken");
    let MemberError::Invalid { problems, .. } = &e else {
        panic!("{e}");
    };
    assert!(
        problems.0[0]
            .to_string()
            .starts_with("tandem.toml:24:15: invalid basic string"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("fix them first (tandem check -c tandem.toml)")
    );
}

#[test]
fn addresses_are_read_like_the_validator_reads_them() {
    for (text, canonical) in [
        ("10.0.0.1", "10.0.0.1"),
        (" 10.0.0.1:5061 ", "10.0.0.1:5061"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:5061", "[2001:db8::1]:5061"),
    ] {
        assert_eq!(
            parse_addr(text).map(|a| a.to_string()).as_deref(),
            Some(canonical),
            "{text}"
        );
    }
    for bad in ["10.0.0.1:0", "fe01", "10.0.0.1:70000", ""] {
        assert_eq!(parse_addr(bad), None, "{bad}");
    }
}

#[test]
fn the_list_shows_configured_and_live_state() {
    let config = config::parse(COMMENTED, "t.toml").expect("valid");
    let offline = list(&config, None);
    assert!(
        offline.starts_with("POOL    MEMBER          WEIGHT  STATE  HEALTH\n"),
        "{offline}"
    );
    assert!(
        offline.contains("fe-dc1  10.1.0.13       1       drain  -\n"),
        "{offline}"
    );
    assert!(offline.ends_with("(no running tandem answered: health unknown)\n"));

    let status = serde_json::json!({ "pools": [
        { "name": "fe-dc1", "members": [
            { "addr": "10.1.0.11", "state": "up", "health": "up" },
            { "addr": "10.1.0.13", "state": "up", "health": "down" },
        ]},
    ]});
    let live = list(&config, Some(&status));
    assert!(
        live.contains("fe-dc1  10.1.0.11       1       up                   up\n"),
        "{live}"
    );
    assert!(
        live.contains("fe-dc1  10.1.0.13       1       drain (running: up)  down\n"),
        "{live}"
    );
    assert!(
        live.contains("fe-dc2  10.2.0.12       1       maint                -\n"),
        "{live}"
    );
    assert!(!live.contains("no running tandem"));
}
