#!/usr/bin/env bash
# Checks what contrib/ ships for Prometheus and Grafana, with promtool:
#   1. every PromQL expression of contrib/grafana/tandem.json (panel targets, annotations, and
#      the selectors of the template variables' label_values queries) parses and type-checks:
#      they are written as recording rules into a temporary file for `promtool check rules`,
#      after the dashboard's variables are replaced by what Grafana would send;
#   2. the dashboard's own rules: it is valid JSON, every variable it uses is defined (or a
#      Grafana built-in), multi-value variables are only used in regex matchers (=~, !~),
#      every query uses the ${datasource} variable;
#   3. every tandem_* and process_* metric name in the dashboard, the alerts and their tests
#      is one src/metrics.rs exposes;
#   4. `promtool check rules` and `promtool test rules` on contrib/prometheus.
# Exits non-zero on the first step that fails, saying which file and expression.
#
#   contrib/check.sh          # needs promtool (apt-get install prometheus) and python3
# tests/contrib.rs runs it (cargo test --test contrib -- --include-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

dashboard=contrib/grafana/tandem.json
alerts=contrib/prometheus/tandem-alerts.yml
alert_tests=contrib/prometheus/tandem-alerts.test.yml

if ! command -v promtool >/dev/null; then
    echo "contrib/check.sh: promtool not found (apt-get install prometheus)" >&2
    exit 1
fi
if ! command -v python3 >/dev/null; then
    echo "contrib/check.sh: python3 not found" >&2
    exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== $dashboard: extract the PromQL expressions"
# Writes $tmp/dashboard-rules.yml (JSON is YAML) and $tmp/index.tsv (record name, where, expr).
python3 - "$dashboard" "$alerts" "$alert_tests" src/metrics.rs "$tmp" <<'EOF'
import json
import re
import sys

dashboard_path, alerts_path, tests_path, metrics_rs, tmp = sys.argv[1:]
problems = []

try:
    with open(dashboard_path, encoding="utf-8") as f:
        dashboard = json.load(f)
except (OSError, ValueError) as e:
    sys.exit(f"{dashboard_path}: not valid JSON: {e}")

variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
# Grafana's built-in interval and range variables, with a value of the right kind.
BUILTINS = {
    "__interval": "5m", "__rate_interval": "5m", "__range": "6h",
    "__interval_ms": "300000", "__range_s": "21600", "__range_ms": "21600000",
}
VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")


def substitute(where, expr):
    """The expression as Prometheus receives it from Grafana, or None after a problem."""
    ok = True

    def value(m):
        nonlocal ok
        name = m.group(1) or m.group(2) or m.group(3)
        if name in BUILTINS:
            return BUILTINS[name]
        var = variables.get(name)
        if var is None:
            problems.append(f"{where}: unknown variable ${name} in: {expr}")
            ok = False
            return m.group(0)
        if var.get("multi") or var.get("includeAll"):
            # Grafana sends a multi-value selection as a regex alternation, so the variable
            # belongs in a regex matcher only.
            before = expr[: m.start()]
            if not re.search(r"[=!]~\s*\"$", before):
                problems.append(
                    f"{where}: multi-value variable ${name} outside a regex matcher "
                    f'(use label=~"${name}") in: {expr}')
                ok = False
            return f"({name}_one|{name}_two)"
        return f"{name}_value"

    out = VAR.sub(value, expr)
    return out if ok else None


def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


rules = []  # (record, where, original expr, expr to check)


def add(record, where, expr):
    checked = substitute(where, expr)
    if checked is not None:
        rules.append((record, where, expr, checked))


for p in panels(dashboard.get("panels", [])):
    title = p.get("title", "?")
    if p.get("type") == "row":
        continue
    if p.get("datasource", {}).get("uid") != "${datasource}":
        problems.append(f"{dashboard_path}: panel {title!r}: datasource is not ${{datasource}}")
    for t in p.get("targets", []):
        ref = t.get("refId", "?")
        where = f"{dashboard_path}: panel {p.get('id')} {title!r} query {ref}"
        if t.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{where}: datasource is not ${{datasource}}")
        if not t.get("expr", "").strip():
            problems.append(f"{where}: no expr")
            continue
        add(f"dashboard:panel_{p.get('id')}_{ref}", where, t["expr"])

for i, a in enumerate(dashboard.get("annotations", {}).get("list", [])):
    if "expr" in a:
        add(f"dashboard:annotation_{i}", f"{dashboard_path}: annotation {a.get('name')!r}", a["expr"])

for name, v in variables.items():
    if v.get("type") != "query":
        continue
    where = f"{dashboard_path}: variable ${name}"
    q = v.get("query")
    q = q.get("query", "") if isinstance(q, dict) else q or ""
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q, re.S)
    if not m:
        problems.append(f"{where}: expected label_values(SELECTOR, LABEL), got: {q}")
        continue
    add(f"dashboard:variable_{name}", where, m.group(1))

if not rules:
    problems.append(f"{dashboard_path}: no PromQL expression found")

# Metric names: what src/metrics.rs exposes (histograms add _bucket, _sum, _count).
with open(metrics_rs, encoding="utf-8") as f:
    exposed = set(re.findall(r"\b((?:tandem|process)_[a-z_]+)\b", f.read()))
NAME = re.compile(r"\b((?:tandem|process)_[a-z_]+)\b")


def known(name):
    return name in exposed or any(
        name.endswith(s) and name[: -len(s)] in exposed for s in ("_bucket", "_sum", "_count"))


sources = [(dashboard_path, r[2]) for r in rules]
for path in (alerts_path, tests_path):
    with open(path, encoding="utf-8") as f:
        sources += [(path, line) for line in f if not line.lstrip().startswith("#")]
for path, text in sources:
    for name in NAME.findall(text):
        if not known(name):
            problems.append(f"{path}: {name} is not a metric src/metrics.rs exposes, in: {text.strip()}")

if problems:
    print("\n".join(sorted(set(problems))), file=sys.stderr)
    sys.exit(1)

with open(f"{tmp}/dashboard-rules.yml", "w", encoding="utf-8") as f:
    json.dump({"groups": [{"name": "dashboard", "rules": [
        {"record": r[0], "expr": r[3]} for r in rules]}]}, f, indent=1)
with open(f"{tmp}/index.tsv", "w", encoding="utf-8") as f:
    for record, where, expr, _ in rules:
        f.write(f"{record}\t{where}\t{expr}\n")
print(f"{len(rules)} expressions")
EOF

echo "== promtool check rules (the dashboard's expressions)"
if ! out=$(promtool check rules "$tmp/dashboard-rules.yml" 2>&1); then
    echo "$out" >&2
    echo "failed expressions:" >&2
    # promtool names the failing rules by their record name; say which panel they come from.
    grep -o 'dashboard:[a-z]*_[A-Za-z0-9_]*' <<<"$out" | sort -u | while read -r record; do
        awk -F'\t' -v r="$record" '$1 == r { printf "  %s:\n    %s\n", $2, $3 }' "$tmp/index.tsv" >&2
    done
    exit 1
fi
echo "$out"

echo "== promtool check rules $alerts"
promtool check rules "$alerts"

echo "== promtool test rules $alert_tests"
promtool test rules "$alert_tests"

echo "contrib/check.sh: all checks passed"
