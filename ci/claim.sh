# Lock Reaper claim step, shared by the GitHub Action (action.yml) and the GitLab CI
# templates (templates/claim.yml, ci/gitlab/claim.yml embed this text verbatim; a test checks).
# POSIX sh: it must at least start in a bare container, to say what is missing.
# It installs the lock-reaper package into a private virtualenv (reused while the package and
# the interpreter are the same) and runs `lock-reaper claim --json`: the same code as the CLI.
#   LR_PACKAGE        what pip installs: a checkout's path, or a pinned requirement
#   LR_TABLE LR_REGION LR_WHO LR_TTL   passed to `lock-reaper claim` when set
#   LR_FAIL_ON_ERROR  "true": a failed claim fails the step; otherwise it warns and goes on
#   LR_OUTPUT         optional file to append key=, who=, claimed-at= lines to (GITHUB_OUTPUT)
#   LR_VENV_ROOT      where the virtualenvs live (default $RUNNER_TOOL_CACHE or $TMPDIR or /tmp)
lr_give_up() {
  if [ "${LR_FAIL_ON_ERROR:-false}" = "true" ]; then
    if [ -n "${GITHUB_ACTIONS:-}" ]; then echo "::error title=Lock Reaper claim::$1"; else echo "ERROR: lock-reaper claim: $1" >&2; fi
    exit 1
  fi
  if [ -n "${GITHUB_ACTIONS:-}" ]; then echo "::warning title=Lock Reaper claim::$1 (no claim written: the lock this job takes is judged without one, and unknown means keep)"
  else echo "WARNING: lock-reaper claim: $1 (no claim written: the lock this job takes is judged without one, and unknown means keep)" >&2; fi
  exit 0
}
case "${LR_FAIL_ON_ERROR:-false}" in true|false) ;; *) LR_FAIL_ON_ERROR=false; echo "lock-reaper claim: fail-on-error must be true or false; using false" >&2 ;; esac
if [ -z "${LR_PACKAGE:-}" ]; then lr_give_up "no package to install (the package input is empty)"; fi
lr_py=""
for lr_c in python3 python; do
  if command -v "$lr_c" >/dev/null 2>&1 && "$lr_c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
    lr_py=$(command -v "$lr_c"); break
  fi
done
if [ -z "$lr_py" ]; then
  lr_found=$( (python3 --version || python --version) 2>&1 | head -n 1)
  lr_give_up "needs python3 >= 3.11 with venv and pip on PATH; found: ${lr_found:-no python}"
fi
if ! "$lr_py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  lr_give_up "$lr_py has no venv/ensurepip module (Debian/Ubuntu images: apt-get install python3-venv)"
fi
lr_tmp=$(mktemp -d 2>/dev/null || echo "${TMPDIR:-/tmp}/lock-reaper.$$")
mkdir -p "$lr_tmp"
# The virtualenv's name: this interpreter, the package spec and, for a checkout, its sources.
lr_key=$("$lr_py" - "$LR_PACKAGE" <<'PY'
import hashlib, pathlib, sys
spec = sys.argv[1]
h = hashlib.sha256(f"{sys.executable}\n{sys.version}\n{spec}\n".encode())
root = pathlib.Path(spec)
if root.is_dir():
    for p in sorted([root / "pyproject.toml", *(root / "reaper").rglob("*.py")]):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
print(h.hexdigest()[:16])
PY
)
if [ -z "$lr_key" ]; then lr_give_up "$lr_py could not read the package at $LR_PACKAGE"; fi
lr_root=${LR_VENV_ROOT:-${RUNNER_TOOL_CACHE:-${TMPDIR:-/tmp}}/lock-reaper}
lr_venv="$lr_root/$lr_key"
if [ ! -f "$lr_venv/.lock-reaper-installed" ] || [ ! -x "$lr_venv/bin/lock-reaper" ]; then
  rm -rf "$lr_venv"
  if ! mkdir -p "$lr_root" 2>"$lr_tmp/log"; then lr_give_up "cannot create $lr_root: $(tail -n 1 "$lr_tmp/log")"; fi
  if ! "$lr_py" -m venv "$lr_venv" >"$lr_tmp/log" 2>&1; then lr_give_up "cannot create a virtualenv in $lr_venv: $(tail -n 2 "$lr_tmp/log")"; fi
  if ! "$lr_venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "$LR_PACKAGE" >"$lr_tmp/log" 2>&1; then
    cat "$lr_tmp/log" >&2
    rm -rf "$lr_venv"
    lr_give_up "pip could not install Lock Reaper from $LR_PACKAGE (its output is above)"
  fi
  : >"$lr_venv/.lock-reaper-installed"
fi
set -- claim --json --ttl "${LR_TTL:-7d}"
if [ -n "${LR_TABLE:-}" ]; then set -- "$@" --table "$LR_TABLE"; fi
if [ -n "${LR_REGION:-}" ]; then set -- "$@" --region "$LR_REGION"; fi
if [ -n "${LR_WHO:-}" ]; then set -- "$@" --who "$LR_WHO"; fi
if "$lr_venv/bin/lock-reaper" "$@" >"$lr_tmp/claim.json" 2>"$lr_tmp/claim.err"; then lr_rc=0; else lr_rc=$?; fi
cat "$lr_tmp/claim.err" >&2
if [ "$lr_rc" -ne 0 ]; then lr_give_up "lock-reaper claim exited with $lr_rc: $(grep -m 1 'error' "$lr_tmp/claim.err" || tail -n 1 "$lr_tmp/claim.err")"; fi
if ! "$lr_venv/bin/python" - "$lr_tmp/claim.json" "${LR_OUTPUT:-}" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1], encoding="utf-8"))
key = json.dumps({"Who": doc["item"]["Who"], "ClaimedAt": doc["item"]["ClaimedAt"]}, separators=(",", ":"))
print(f"lock-reaper: claimed {doc['who']} for {doc['claim']} in {doc['table']} at {doc['claimed_at']}; key {key}")
if sys.argv[2]:
    with open(sys.argv[2], "a", encoding="utf-8") as out:
        out.write(f"key={key}\nwho={doc['who']}\nclaimed-at={doc['claimed_at']}\n")
PY
then lr_give_up "claimed, but could not read lock-reaper's JSON answer"; fi
rm -rf "$lr_tmp"
exit 0
