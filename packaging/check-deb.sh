#!/usr/bin/env bash
# Installs the package built by packaging/deb.sh on this machine, checks it as an operator meets
# it, then purges it and checks that nothing it installed is left. Needs root (dpkg -i); CI runs
# it. Lintian is installed with apt-get when missing; its errors fail the check.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "packaging/check-deb.sh: FAILED: $*" >&2
    exit 1
}
[ "$(id -u)" = 0 ] || fail "needs root (dpkg -i, dpkg --purge)"

target="${CARGO_TARGET_DIR:-target}"
deb="$(ls -t "$target"/debian/tandem_*.deb 2>/dev/null | head -n 1)"
[ -n "$deb" ] || fail "no $target/debian/tandem_*.deb: run packaging/deb.sh first"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "== $deb ($(du -k "$deb" | cut -f1) KiB)"
dpkg-deb --contents "$deb"

if ! command -v lintian >/dev/null 2>&1; then
    echo "== apt-get install lintian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lintian >/dev/null
fi
echo "== lintian (errors fail; the warnings kept are listed in the README)"
lintian --fail-on error --info "$deb"

# A package left over from an interrupted run would hide what this install does.
dpkg --purge tandem >/dev/null 2>&1 || true

echo "== dpkg -i"
dpkg -i "$deb"
dpkg -L tandem >"$tmp/files"

echo "== files in place"
for f in /usr/bin/tandem \
    /lib/systemd/system/tandem.service \
    /usr/lib/sysusers.d/tandem.conf \
    /etc/tandem/tandem.toml \
    /usr/share/man/man1/tandem.1.gz \
    /usr/share/bash-completion/completions/tandem \
    /usr/share/zsh/vendor-completions/_tandem \
    /usr/share/fish/vendor_completions.d/tandem.fish \
    /usr/share/doc/tandem/copyright \
    /usr/share/doc/tandem/changelog.Debian.gz \
    /usr/share/doc/tandem/README.md \
    /usr/share/doc/tandem/examples/keepalived.conf \
    /usr/share/doc/tandem/examples/config/lync-edge.toml; do
    [ -f "$f" ] || fail "$f is not installed"
done
dpkg-query -W -f='${Conffiles}\n' tandem | grep -q ' /etc/tandem/tandem.toml ' ||
    fail "/etc/tandem/tandem.toml is not a conffile"
getent passwd tandem >/dev/null || fail "the tandem system user was not created"
# Installed, not enabled: the shipped config has example member addresses to edit first.
[ ! -e /etc/systemd/system/multi-user.target.wants/tandem.service ] ||
    fail "the unit was enabled by the install"
echo "ok"

echo "== tandem check -c /etc/tandem/tandem.toml"
/usr/bin/tandem check -c /etc/tandem/tandem.toml

echo "== systemd-analyze verify /lib/systemd/system/tandem.service"
systemd-analyze verify --man=no /lib/systemd/system/tandem.service >"$tmp/verify" 2>&1 ||
    { cat "$tmp/verify" >&2; fail "systemd-analyze verify failed"; }
if grep -F tandem.service "$tmp/verify" >&2; then
    fail "systemd-analyze verify warned about the installed unit"
fi
echo "ok"

echo "== man -l tandem.1.gz (warnings fail)"
LC_ALL=C.UTF-8 MANWIDTH=100 man --warnings -l /usr/share/man/man1/tandem.1.gz >"$tmp/man" 2>"$tmp/man.err"
if [ -s "$tmp/man.err" ]; then
    cat "$tmp/man.err" >&2
    fail "man reported warnings"
fi
for section in NAME SYNOPSIS DESCRIPTION OPTIONS COMMANDS FILES SIGNALS "EXIT STATUS" ENVIRONMENT; do
    grep -q "^$section" "$tmp/man" || fail "the man page has no $section section"
done
echo "ok ($(wc -l <"$tmp/man") lines)"

echo "== bash completion"
bash -c 'source /usr/share/bash-completion/completions/tandem && complete -p tandem' ||
    fail "the bash completion does not load"

echo "== dpkg --purge"
dpkg --purge tandem
# Directories (and /lib, a link to one on a merged /usr) are shared with other packages.
while read -r f; do
    if [ ! -d "$f" ] && { [ -e "$f" ] || [ -L "$f" ]; }; then
        fail "$f is still there after purge"
    fi
done <"$tmp/files"
[ ! -e /etc/tandem ] || fail "/etc/tandem is still there after purge"
echo "ok"
