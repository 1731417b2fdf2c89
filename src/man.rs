//! `tandem manpage`: the tandem(1) page in roff, built from the clap definitions so the page and
//! the CLI cannot disagree, plus the sections clap knows nothing of (files, signals, exit status,
//! environment). A module of the binary, not of the library: it describes the command line.
//!
//! One page for every command (as haproxy(1) and keepalived(8) do): `tandem run` and `tandem
//! check` are read together, and clap_mangen's own subcommand section would point at
//! tandem-run(1) and friends, which are not shipped.

use std::io::{self, Write};

use clap::Command;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};

/// Writes tandem(1) for `cmd` (the whole CLI) to `out`.
pub fn render(cmd: Command, out: &mut dyn Write) -> io::Result<()> {
    let man = Man::new(cmd.clone()).manual("tandem manual");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;

    let mut page = Roff::new();
    page.control("SH", ["OPTIONS"]);
    options(&mut page, &cmd);
    page.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        command(&mut page, &format!("tandem {}", sub.get_name()), sub);
    }
    for (title, paragraphs) in SECTIONS {
        page.control("SH", [*title]);
        for (term, text) in *paragraphs {
            if term.is_empty() {
                page.control("PP", []);
            } else {
                page.control("TP", []).text([bold(*term)]);
            }
            page.text([roman(*text)]);
        }
    }
    page.control("SH", ["VERSION"]);
    page.text([roman(format!("v{}", env!("CARGO_PKG_VERSION")))]);
    page.to_writer(out)
}

/// A command's subsection, then one for each of its own commands (`tandem member set`).
fn command(page: &mut Roff, name: &str, cmd: &Command) {
    page.control("SS", [name]);
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        page.text([roman(format!("{about}."))]);
    }
    options(page, cmd);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        command(page, &format!("{name} {}", sub.get_name()), sub);
    }
}

/// One `.TP` paragraph per visible argument of `cmd`: its flags, its help, default and variable.
fn options(page: &mut Roff, cmd: &Command) {
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        let mut head = Vec::new();
        if let Some(short) = arg.get_short() {
            head.push(bold(format!("-{short}")));
            head.push(roman(", "));
        }
        match arg.get_long() {
            Some(long) => head.push(bold(format!("--{long}"))),
            None => head.push(italic(arg.get_id().as_str().to_uppercase())),
        }
        if arg.get_long().is_some() && arg.get_action().takes_values() {
            let value = arg
                .get_value_names()
                .and_then(|v| v.first())
                .map_or_else(|| arg.get_id().as_str().to_uppercase(), |v| v.to_string());
            head.push(roman(" "));
            head.push(italic(value));
        }
        page.control("TP", []).text(head);
        // clap drops the final period of a doc comment; the page adds sentences after it.
        let mut help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        if !help.is_empty() && !help.ends_with('.') {
            help.push('.');
        }
        let mut body = vec![roman(help)];
        let possible: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_string())
            .collect();
        if !possible.is_empty() && arg.get_action().takes_values() {
            body.push(roman(format!(" One of: {}.", possible.join(", "))));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if !defaults.is_empty() && arg.get_action().takes_values() {
            body.push(roman(format!(" Default: {}.", defaults.join(", "))));
        }
        if let Some(env) = arg.get_env() {
            body.push(roman(" Environment: "));
            body.push(bold(env.to_string_lossy().into_owned()));
            body.push(roman("."));
        }
        page.text(body);
    }
}

/// Sections written by hand: (title, [(term, text)]); an empty term starts a plain paragraph.
type Section = (&'static str, &'static [(&'static str, &'static str)]);

const SECTIONS: &[Section] = &[
    (
        "FILES",
        &[
            (
                "/etc/tandem/tandem.toml",
                "The config file (TOML): pools, their members and checks, services, [admin]. Validate it with tandem check; the running tandem reloads it when it changes. Commented examples are in /usr/share/doc/tandem/examples/config/.",
            ),
            (
                "/run/tandem/upgrade.sock",
                "The control socket a new tandem process connects to (tandem run --upgrade-from) to take over the listening sockets in a binary upgrade.",
            ),
            (
                "/lib/systemd/system/tandem.service",
                "The systemd unit (Type=notify): runs tandem check before starting, reloads with SIGHUP, upgrades with SIGUSR2. Installed but not enabled: edit the config first, then systemctl enable --now tandem.",
            ),
            (
                "/usr/lib/sysusers.d/tandem.conf",
                "Declares the unprivileged system user tandem the unit runs as.",
            ),
        ],
    ),
    (
        "SIGNALS",
        &[
            (
                "SIGHUP",
                "Reload the config file: it is validated, new listeners are bound and new members probed before anything changes; a bad file is rejected with every problem logged and the running config keeps serving.",
            ),
            (
                "SIGTERM, SIGINT",
                "Stop accepting, let open connections finish for up to --shutdown-grace, close the rest, exit 0.",
            ),
            (
                "SIGUSR1",
                "Reopen the access log file ([access_log] path), as logrotate expects after renaming it; lines already queued go to the new file.",
            ),
            (
                "SIGUSR2",
                "Binary upgrade: start the tandem binary anew; the new process takes over the listening sockets, and once it serves this one stops accepting and drains.",
            ),
        ],
    ),
    (
        "EXIT STATUS",
        &[
            (
                "0",
                "tandem check: the config is valid. tandem run: stopped by a signal after draining, or handed over to a new process.",
            ),
            (
                "1",
                "The config is invalid (every problem is printed with file:line:column), a listener or the admin API could not be bound, the admin API did not answer (tandem status), an upgrade could not take over, or tandem member set changed nothing (unknown pool or member, a read-only file, an edit that would not validate).",
            ),
            (
                "2",
                "The command line is wrong (unknown option, missing value).",
            ),
            (
                "3",
                "tandem member set: the config file is written (or already said so), but no running tandem could be told to reload it (no admin API answered, no --pid). A tandem watching the file reloads it by itself.",
            ),
            (
                "4",
                "tandem member set: the config file is written, but the running tandem rejected the reload and keeps its previous config (the reason is printed).",
            ),
        ],
    ),
    (
        "ENVIRONMENT",
        &[
            ("TANDEM_CONFIG", "The config file, where -c is not given."),
            (
                "TANDEM_LOG_FORMAT",
                "human or json: the format of the log on stderr.",
            ),
            (
                "TANDEM_WORKERS",
                "Worker threads of the data path (tandem run), each with its own SO_REUSEPORT socket on every service.",
            ),
            (
                "RUST_LOG",
                "Log filter (tracing's env-filter syntax), e.g. debug or tandem=debug; default info.",
            ),
            (
                "NOTIFY_SOCKET, WATCHDOG_USEC",
                "Set by systemd: tandem then reports READY, RELOADING, STOPPING and watchdog pings.",
            ),
            ("NO_COLOR", "Set: no colour codes in the log."),
        ],
    ),
    (
        "SEE ALSO",
        &[(
            "",
            "systemctl(1), journalctl(1), haproxy(1), keepalived(8). The README in /usr/share/doc/tandem/ describes every config key and behaviour.",
        )],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> String {
        let cmd = Command::new("tandem")
            .about("Layer-4 load balancer")
            .arg(clap::arg!(-c --config <FILE> "Config file.").env("TANDEM_CONFIG"))
            .subcommand(Command::new("check").about("Validate a config file."))
            .subcommand(Command::new("secret").hide(true));
        let mut out = Vec::new();
        render(cmd, &mut out).expect("renders");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn every_section_and_visible_command_is_there() {
        let page = page();
        for section in [
            "NAME",
            "SYNOPSIS",
            "OPTIONS",
            "COMMANDS",
            "FILES",
            "SIGNALS",
            "EXIT STATUS",
            "ENVIRONMENT",
        ] {
            assert!(
                page.contains(&format!(".SH {section}\n"))
                    || page.contains(&format!(".SH \"{section}\"\n")),
                "{section} missing:\n{page}"
            );
        }
        assert!(page.contains("tandem check"));
        assert!(page.contains("TANDEM_CONFIG"));
        assert!(
            !page.contains("secret"),
            "hidden commands stay out of the page"
        );
    }
}
