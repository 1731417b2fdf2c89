#!/usr/bin/env bash
# Builds the Debian package: target/debian/tandem_<version>-1_<arch>.deb.
#
# One command for the README's install section. cargo-deb packs the files listed under
# [package.metadata.deb] in Cargo.toml; the man page and the shell completions among them are
# produced here first by the freshly built binary (`tandem manpage`, `tandem completions`), so
# they always describe the CLI of the binary they ship with.
#
# Needs cargo-deb (`cargo install cargo-deb --locked`, about 1.5 min on 2 cores); as root with
# CARGO_DEB_INSTALL=1 this script installs it when missing. Extra arguments go to `cargo deb`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    if [ "${CARGO_DEB_INSTALL:-0}" = 1 ]; then
        echo "== cargo install cargo-deb --locked"
        cargo install cargo-deb --locked
    else
        echo "packaging/deb.sh: cargo-deb is missing: cargo install cargo-deb --locked" >&2
        exit 1
    fi
fi

echo "== cargo build --release"
cargo build --release --locked --bin tandem
target="${CARGO_TARGET_DIR:-target}"
bin="$target/release/tandem"
assets="$target/release/deb-assets"
mkdir -p "$assets"
# Debian policy wants man pages gzip -9n (no name, no time: reproducible); cargo-deb compresses
# only the files it did not build.
"$bin" manpage | gzip -9n >"$assets/tandem.1.gz"
"$bin" completions bash >"$assets/tandem.bash"
"$bin" completions zsh >"$assets/_tandem"
"$bin" completions fish >"$assets/tandem.fish"

echo "== cargo deb"
# --strip: the release profile keeps line tables for profiling; the package ships a stripped
# binary, as Debian expects.
cargo deb --no-build --strip "$@"
