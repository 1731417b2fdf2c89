#!/bin/sh
# Runs every cargo-fuzz target for a bounded time: FUZZ_SECONDS each (default 60).
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); without either it says
# so and exits 0, so CI on a machine without them passes with a clear message. A finding (a
# crash, a failed assertion) stops the run with a non-zero status and libFuzzer's reproducer in
# fuzz/artifacts/<target>/.
#
#   fuzz/run.sh                       # every target, 60 s each
#   FUZZ_SECONDS=30 fuzz/run.sh       # shorter
#   fuzz/run.sh sip_response          # one target
#   fuzz/run.sh tls_handshake         # the TLS probe's handshake (verify = false)
#
# Targets: config_parse, admin_request, http_response, sip_response, stun_response,
# tls_handshake (the list comes from `cargo fuzz list`, i.e. fuzz/Cargo.toml).
set -eu

cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-60}"

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz: skipped: no nightly toolchain (rustup toolchain list); cargo-fuzz needs one"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: skipped: cargo-fuzz is not installed (cargo install cargo-fuzz)"
    exit 0
fi

targets="$*"
if [ -z "$targets" ]; then
    targets="$(cargo +nightly fuzz list)"
fi

for target in $targets; do
    mkdir -p "corpus/$target"
    echo "fuzz: $target for ${seconds}s"
    # The seeds are read, new inputs go to corpus/ (ignored by git).
    cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1
done
echo "fuzz: every target ran ${seconds}s without a finding"
