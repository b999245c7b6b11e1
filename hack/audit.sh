#!/usr/bin/env bash
# Known vulnerabilities in the locked Python dependencies (uv.lock, every group), with osv-scanner
# (built from Go modules by tests/envtest/binaries.py).
#
#   hack/audit.sh              online (OSV's own API); where it cannot be reached and OCTOCONN_ADVISORY_DB is set,
#                              offline against that local database
#   hack/audit.sh --offline    offline only, against OCTOCONN_ADVISORY_DB
#
# Settings (environment): OCTOCONN_ADVISORY_DB, a folder in osv-scanner's offline layout
# (<folder>/osv-scalibr/PyPI/all.zip, an OSV export); OCTOCONN_AUDIT_REQUIREMENTS, a requirements.txt to audit
# instead of uv.lock (the tests use it).
# Exit status: 0 nothing known applies, 1 advisories apply, 2 the audit itself could not run.
# The report always names the database it used and how old its newest advisory is.
set -uo pipefail
cd "$(dirname "$0")/.."

offline_only=0
case "${1:-}" in
  --offline) offline_only=1 ;;
  "") ;;
  *) echo "usage: hack/audit.sh [--offline]" >&2; exit 2 ;;
esac

fail() { echo "audit: $*" >&2; exit 2; }

scanner="$(uv run --frozen python -m tests.envtest.binaries osv-scanner | sed -n 's/^osv-scanner=//p')" \
  || fail "cannot build osv-scanner"
[ -x "$scanner" ] || fail "osv-scanner was not built"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
requirements="${OCTOCONN_AUDIT_REQUIREMENTS:-}"
if [ -z "$requirements" ]; then
  requirements="$tmp/requirements.txt"
  # Every locked package, the image's and the development tools'; the project itself is not on PyPI.
  uv export --frozen --all-groups --no-emit-project --no-hashes --quiet -o "$requirements" \
    || fail "uv export of uv.lock failed"
fi
packages="$(grep -cE '^[A-Za-z0-9]' "$requirements")"

scan() {  # scan [osv-scanner flags...]; returns osv-scanner's exit status
  # Bounded: an unreachable network must end in the offline fallback, not hang.
  timeout 300 "$scanner" scan source "$@" --lockfile "requirements.txt:$requirements" >"$tmp/out" 2>"$tmp/err"
}

db_age() {  # the offline database: the date of its newest advisory and its age in days
  python3 - "$1" <<'PY'
import json, sys, zipfile
from datetime import datetime, timezone
newest = None
with zipfile.ZipFile(sys.argv[1]) as z:
    names = [n for n in z.namelist() if n.endswith(".json")]
    for name in names:
        stamp = json.loads(z.read(name)).get("modified")
        if stamp and (newest is None or stamp > newest):
            newest = stamp
if newest is None:
    print(f"{len(names)} advisories, no modification dates")
else:
    when = datetime.fromisoformat(newest.replace("Z", "+00:00"))
    days = (datetime.now(timezone.utc) - when).days
    print(f"{len(names)} advisories, newest modified {when:%Y-%m-%d} ({days} days old)")
PY
}

rc=2
database=""
if [ "$offline_only" = 0 ]; then
  scan --format table; rc=$?
  [ "$rc" -le 1 ] && database="OSV online (live data, $(date -u +%Y-%m-%dT%H:%MZ))"
fi
if [ "$rc" -gt 1 ]; then
  if [ -z "${OCTOCONN_ADVISORY_DB:-}" ]; then
    [ "$offline_only" = 1 ] || sed 's/^/  /' "$tmp/err" >&2
    fail "the online database could not be used and OCTOCONN_ADVISORY_DB is not set (docs/install.md, Audit)"
  fi
  [ "$offline_only" = 1 ] || echo "audit: OSV's online database could not be used (osv-scanner exit $rc); offline instead"
  zip="$OCTOCONN_ADVISORY_DB/osv-scalibr/PyPI/all.zip"
  [ -f "$zip" ] || fail "OCTOCONN_ADVISORY_DB=$OCTOCONN_ADVISORY_DB has no osv-scalibr/PyPI/all.zip"
  OSV_SCANNER_LOCAL_DB_CACHE_DIRECTORY="$OCTOCONN_ADVISORY_DB" scan --offline --format table; rc=$?
  database="local OSV export $zip: $(db_age "$zip")"
fi
cat "$tmp/out"
echo "audit: database: $database"
echo "audit: $packages locked packages checked ($( [ -n "${OCTOCONN_AUDIT_REQUIREMENTS:-}" ] && echo "$requirements" || echo uv.lock))"
case "$rc" in
  0) echo "audit: no known vulnerability applies" ;;
  1) echo "audit: advisories apply (listed above)"; exit 1 ;;
  *) sed 's/^/  /' "$tmp/err" >&2; fail "osv-scanner failed (exit $rc)" ;;
esac
