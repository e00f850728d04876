"""The infra files, checked for syntax and for the pieces they must hold.

No container engine runs on these machines, so the compose file, the Dockerfile and the
Kubernetes manifests are never run here; these tests read them. infra/prefect.yaml is run for
real by tests/flows/test_scale.py.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import Flow

INFRA = Path(__file__).resolve().parents[2] / "infra"
REPO = INFRA.parent
#: Names whose values must never be literal in a committed file.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|AUTH_STRING|API_KEY|ACCESS_KEY", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")


def _yaml(name: str) -> Any:
    return yaml.safe_load((INFRA / name).read_text())


def _yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _env_example() -> dict[str, str]:
    pairs = {}
    for line in (INFRA / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


# --------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _yaml("docker-compose.yml")


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def test_compose_has_the_services(compose) -> None:
    services = compose["services"]
    assert {"postgres", "prefect-server", "minio", "create-bucket", "deploy"} <= set(services)
    workers = [s for s in services.values() if _command(s)[:3] == ["prefect", "worker", "start"]]
    assert len(workers) == 2
    for worker in workers:
        command = _command(worker)
        assert command[command.index("--pool") + 1] == "qwbatch-process"
        assert worker["depends_on"]["create-bucket"]["condition"] == (
            "service_completed_successfully"
        )
    server = services["prefect-server"]
    assert _command(server)[:3] == ["prefect", "server", "start"]
    assert server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://prefect:${POSTGRES_PASSWORD}@postgres:5432/"
    )
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    bucket = services["create-bucket"]
    assert bucket["restart"] == "no"
    assert bucket["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb --ignore-existing" in bucket["command"][0]
    assert services["deploy"]["restart"] == "no"
    assert _command(services["deploy"]) == ["sh", "infra/deploy.sh", "qwbatch-process", "process"]


def test_compose_is_closed_by_default(compose) -> None:
    services = compose["services"]
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert published == {"prefect-server": ["127.0.0.1:4200:4200"]}
    server_auth = services["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"]
    assert INTERPOLATION.fullmatch(server_auth)
    for name in ("worker-1", "worker-2", "deploy"):
        # The clients send exactly what the server requires.
        assert services[name]["environment"]["PREFECT_API_AUTH_STRING"] == server_auth


def test_compose_takes_every_credential_from_the_env_file(compose) -> None:
    example = _env_example()
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert INTERPOLATION.fullmatch(str(value)), (name, key, value)
    text = (INFRA / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert required <= set(example), required - set(example)
    # The real env file is never committed.
    assert ".env" in (INFRA / ".gitignore").read_text().split()
    if shutil.which("git"):
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", str(INFRA / ".env")], cwd=REPO, check=False
        )
        assert ignored.returncode == 0


def test_compose_workers_get_only_what_they_use(compose) -> None:
    worker = compose["services"]["worker-1"]["environment"]
    assert not any(k.startswith(("MINIO_", "POSTGRES_")) for k in worker)
    assert {"DASHSCOPE_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(worker)
    server = compose["services"]["prefect-server"]["environment"]
    assert not any("DASHSCOPE" in k or k.startswith(("AWS_", "MINIO_")) for k in server)


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, with continuations joined and comments dropped."""
    text = (INFRA / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    steps = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            steps.append((instruction.upper(), args.strip()))
    return steps


def test_dockerfile_builds_a_non_root_image_without_secrets() -> None:
    steps = _dockerfile()
    stages = [args for op, args in steps if op == "FROM"]
    assert len(stages) == 2
    assert " AS build" in stages[0]
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    users = [args for op, args in final if op == "USER"]
    user = users[-1].split(":")[0]
    assert user.isdigit()  # numeric, so Kubernetes can check runAsNonRoot
    assert user != "0"
    assert [op for op, _ in final][-1] == "CMD"
    assert any(op == "RUN" and "pip install" in args and "qwbatch" in args for op, args in final)
    for op, args in steps:
        if op in ("ENV", "ARG"):
            assert not SECRET_NAME.search(args), args
        if op in ("COPY", "ADD") and "--from=" not in args:
            sources = [a for a in args.split()[:-1] if not a.startswith("--")]
            for source in sources:
                assert source not in (".", "./", "*"), args
                assert ".env" not in source, args
                assert (REPO / source).exists(), f"{source} is not in the repository"


def test_dockerignore_keeps_the_env_file_out() -> None:
    lines = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert lines[lines.index("**")] == "**"  # everything out, then only what is named
    assert "**/.env" in lines


def test_deploy_script_is_valid_shell_that_applies_the_prefect_file() -> None:
    script = INFRA / "deploy.sh"
    assert "PREFECT_FILE=infra/prefect.yaml" in script.read_text()
    if shutil.which("sh"):
        check = subprocess.run(["sh", "-n", str(script)], capture_output=True, check=False)
        assert check.returncode == 0, check.stderr


FAKE_PREFECT = """#!/bin/sh
echo "$*" >> "$PREFECT_CALLS"
"""
SYSTEM_PATH = "/usr/bin:/bin"


def run_deploy(tmp_path: Path, env: dict[str, str], *, on_path: bool) -> tuple[str, list[str]]:
    """Run deploy.sh from a copy of the repo's infra/ with a fake ``prefect`` that records its
    arguments, on PATH or (``on_path`` False) in ``.venv/bin`` only; its output and calls."""
    root = tmp_path / "repo"
    shutil.copytree(INFRA, root / "infra")
    fake = (tmp_path / "bin" if on_path else root / ".venv" / "bin") / "prefect"
    fake.parent.mkdir(parents=True)
    fake.write_text(FAKE_PREFECT)
    fake.chmod(0o755)
    calls = tmp_path / "calls.txt"
    path = f"{fake.parent}:{SYSTEM_PATH}" if on_path else SYSTEM_PATH
    done = subprocess.run(
        ["sh", "infra/deploy.sh"],
        cwd=root,
        env={"PATH": path, "PREFECT_CALLS": str(calls), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout + done.stderr, calls.read_text().splitlines()


@pytest.mark.skipif(
    shutil.which("sh") is None or shutil.which("prefect", path=SYSTEM_PATH) is not None,
    reason="needs sh, and no prefect in the system folders",
)
def test_deploy_skips_the_nightly_schedule_without_its_variables(tmp_path: Path) -> None:
    output, calls = run_deploy(tmp_path, {}, on_path=False)  # prefect found in .venv/bin
    assert "skipping nightly-catalog: set QWBATCH_NIGHTLY_MANIFEST and QWBATCH_NIGHTLY_OUT" in (
        output
    )
    (deploy,) = [call for call in calls if call.startswith("--no-prompt deploy")]
    assert deploy == (
        "--no-prompt deploy --prefect-file infra/prefect.yaml "
        "--name render-manifest --name render-shards"
    )
    assert calls[0].startswith("work-pool create qwbatch-process")
    assert calls[-1] == "work-queue set-concurrency-limit runs 2 --pool qwbatch-process"

    half = {"QWBATCH_NIGHTLY_MANIFEST": "s3://b/nightly.parquet"}
    _, calls = run_deploy(tmp_path / "half", half, on_path=True)
    assert "--all" not in " ".join(calls)  # one of the two is not enough

    both = {**half, "QWBATCH_NIGHTLY_OUT": "s3://b/out"}
    output, calls = run_deploy(tmp_path / "both", both, on_path=True)
    assert "skipping" not in output
    assert "--no-prompt deploy --prefect-file infra/prefect.yaml --all" in calls


# --------------------------------------------------------------------------- Kubernetes


def test_k8s_manifests_parse_and_run_non_root() -> None:
    docs = {
        doc["kind"]: doc
        for path in INFRA.glob("k8s/*.yaml")
        if path.name != "values.yaml"
        for doc in _yaml_docs(path)
    }
    labels = docs["Namespace"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert docs["ServiceAccount"]["metadata"]["name"] == "qwbatch-flows"
    assert docs["ServiceAccount"]["automountServiceAccountToken"] is False


def test_helm_values_mount_secrets_and_run_non_root() -> None:
    worker = _yaml("k8s/values.yaml")["worker"]
    assert worker["apiConfig"] == "server"
    assert worker["config"]["workPool"] == "qwbatch-kubernetes"
    assert worker["config"]["type"] == "kubernetes"
    (auth,) = [e for e in worker["extraEnvVars"] if e["name"] == "PREFECT_API_AUTH_STRING"]
    assert set(auth) == {"name", "valueFrom"}  # from a Secret, never a literal value
    assert auth["valueFrom"]["secretKeyRef"]["name"] == "qwbatch-prefect-auth"
    for context in (
        worker["podSecurityContext"],
        worker["containerSecurityContext"],
        worker["initContainer"]["containerSecurityContext"],
    ):
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] != 0
    assert worker["containerSecurityContext"]["allowPrivilegeEscalation"] is False
    assert worker["containerSecurityContext"]["capabilities"]["drop"] == ["ALL"]
    for env in worker["extraEnvVars"]:
        assert "value" not in env or not SECRET_NAME.search(env["name"]), env


@pytest.fixture(scope="module")
def job_template() -> dict[str, Any]:
    return json.loads((INFRA / "k8s" / "base-job-template.json").read_text())


def test_base_job_template_mounts_secrets_into_non_root_pods(job_template) -> None:
    pod = job_template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "qwbatch-flow-secrets"}}]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user (infra/Dockerfile)
    assert "USER 10001:10001" in (INFRA / "Dockerfile").read_text()
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False


def test_base_job_template_declares_every_placeholder(job_template) -> None:
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(job_template["job_configuration"])))
    declared = set(job_template["variables"]["properties"])
    assert used <= declared, used - declared


# --------------------------------------------------------------------------- prefect.yaml


@pytest.fixture(scope="module")
def prefect_file() -> dict[str, Any]:
    return _yaml("prefect.yaml")


def _flow(entrypoint: str) -> Flow[..., Any]:
    module, _, name = entrypoint.partition(":")
    found = getattr(importlib.import_module(module), name)
    assert isinstance(found, Flow)
    return found


def test_prefect_file_deploys_the_flows_it_names(prefect_file) -> None:
    deployments = {d["name"]: d for d in prefect_file["deployments"]}
    assert set(deployments) == {"render-manifest", "render-shards", "nightly-catalog"}
    assert prefect_file["pull"] == []  # the code is installed where flows run
    for deployment in deployments.values():
        flow = _flow(deployment["entrypoint"])
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(deployment.get("parameters", {})) <= accepted, deployment["name"]
    fan_out = deployments["render-manifest"]["parameters"]["shard_deployment"]
    assert fan_out == f"{_flow(deployments['render-shards']['entrypoint']).name}/render-shards"


def test_prefect_file_schedules_the_nightly_catalog(prefect_file) -> None:
    nightly = {d["name"]: d for d in prefect_file["deployments"]}["nightly-catalog"]
    (schedule,) = nightly["schedules"]
    assert schedule["cron"] == "0 2 * * *"
    assert schedule["timezone"] == "Asia/Singapore"
    assert nightly["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}


def test_prefect_file_defines_three_pools_matching_the_infra(prefect_file, compose) -> None:
    pools = prefect_file["definitions"]["work_pools"]
    assert {p["name"] for p in pools.values()} == {
        "qwbatch-process",
        "qwbatch-docker",
        "qwbatch-kubernetes",
    }
    docker = pools["docker"]["job_variables"]
    assert docker["networks"] == [compose["networks"]["qwbatch"]["name"]]
    k8s = pools["kubernetes"]["job_variables"]
    variables = json.loads((INFRA / "k8s" / "base-job-template.json").read_text())["variables"]
    assert set(k8s) <= set(variables["properties"])
    assert k8s["service_account_name"] == "qwbatch-flows"
    assert k8s["namespace"] == "qwbatch"


def test_prefect_file_holds_no_secret(prefect_file) -> None:
    text = (INFRA / "prefect.yaml").read_text()
    # Secret placeholders in job variables are resolved at deploy time and stored in the
    # deployment; secrets travel as block *names* in QWBATCH_SECRET_BLOCKS instead.
    assert "prefect.blocks.secret" not in re.sub(r"#.*", "", text)

    def values(node: Any, path: str = "") -> list[tuple[str, Any]]:
        if isinstance(node, dict):
            return [pair for k, v in node.items() for pair in values(v, f"{path}.{k}")]
        if isinstance(node, list):
            return [pair for v in node for pair in values(v, path)]
        return [(path, node)]

    for path, value in values(prefect_file):
        name = path.rsplit(".", 1)[-1]
        if name == "QWBATCH_SECRET_BLOCKS":  # variable → block *name*: no value in sight
            blocks = json.loads(value)
            assert all(re.fullmatch(r"[a-z0-9-]+", block) for block in blocks.values())
        elif SECRET_NAME.search(name):
            assert str(value).startswith("{{"), (path, value)


def test_deployment_docs_walk_through_scale_and_say_what_was_not_run() -> None:
    section = (REPO / "docs" / "deployment.md").read_text()
    for piece in ("infra/prefect.yaml", "docker-compose.yml", "infra/k8s/", "Dockerfile"):
        assert piece in section
    assert "No container engine runs on the development machines" in section


def test_deployment_docs_automation_is_one_prefect_accepts() -> None:
    from prefect.events.schemas.automations import AutomationCore

    page = (REPO / "docs" / "deployment.md").read_text()
    (text,) = re.findall(r"```yaml\n# nightly-alert.yaml\n(.*?)```", page, re.DOTALL)
    block_id = "0b6e1a3e-0000-4000-8000-000000000000"
    automation = AutomationCore.model_validate(
        yaml.safe_load(text.replace("<the block's id, from `prefect block ls`>", block_id))
    )
    assert automation.trigger.match_related["prefect.resource.name"] in (
        "nightly-catalog",
        ["nightly-catalog"],
    )
    assert {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"} <= automation.trigger.expect
