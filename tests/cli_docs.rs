//! The man page and completions the Debian package ships come from the binary itself
//! (`tandem manpage`, `tandem completions SHELL`): they must describe the CLI it parses.

use std::process::Command;

fn tandem(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .output()
        .expect("tandem runs");
    assert!(out.status.success(), "tandem {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn man_page_names_every_command_and_the_operator_sections() {
    let page = tandem(&["manpage"]);
    assert!(page.contains("\n.TH tandem 1 "), "no title line");
    for command in [
        "tandem run",
        "tandem check",
        "tandem status",
        "tandem demo",
        "tandem completions",
        "tandem member set",
        "tandem member list",
    ] {
        assert!(page.contains(command), "{command} missing");
    }
    for section in ["FILES", "SIGNALS", "EXIT STATUS", "ENVIRONMENT"] {
        assert!(
            page.contains(&format!(".SH {section}"))
                || page.contains(&format!(".SH \"{section}\"")),
            "{section} missing"
        );
    }
    for flag in [
        "shutdown\\-grace",
        "upgrade\\-from",
        "SIGHUP",
        "TANDEM_CONFIG",
    ] {
        assert!(page.contains(flag), "{flag} missing");
    }
    assert!(
        !page.contains("manpage"),
        "the hidden command stays out of the page"
    );
}

#[test]
fn completions_cover_the_subcommands_in_each_shell() {
    for (shell, marker) in [
        ("bash", "_tandem()"),
        ("zsh", "#compdef tandem"),
        ("fish", "complete -c tandem"),
    ] {
        let script = tandem(&["completions", shell]);
        assert!(script.contains(marker), "{shell}: no {marker}");
        for command in ["run", "check", "status", "demo"] {
            assert!(script.contains(command), "{shell}: {command} missing");
        }
    }
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["completions", "cmd.exe"])
        .output()
        .expect("tandem runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}
