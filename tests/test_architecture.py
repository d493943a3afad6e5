"""The import rules of docs/architecture.md, checked on the source: who may import whom, and no loops.

Every import counts, also the ones inside functions (a lazy import is still a dependency). Units
are the packages under ``edge_agent`` (``edge_agent.detectors``, ``edge_agent.comms``...) and the
top-level packages beside it (``converters``, ``reference_model``, ``office``, ``bench``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# unit -> the units it may import (itself always allowed). Leaves first, the composition root last.
ALLOWED: dict[str, set[str]] = {
    "edge_agent.errors": set(),
    "edge_agent.util": set(),
    "edge_agent.contract": set(),
    "edge_agent.imageio": {"edge_agent.errors"},
    "edge_agent.bundle": {"edge_agent.errors", "edge_agent.util", "edge_agent.contract"},
    "edge_agent.detectors": {"edge_agent.errors", "edge_agent.util", "edge_agent.contract", "edge_agent.bundle"},
    "edge_agent.config": {"edge_agent.errors", "edge_agent.util", "edge_agent.detectors"},
    "edge_agent.stats": {"edge_agent.errors", "edge_agent.util"},
    "edge_agent.video": {"edge_agent.errors", "edge_agent.util", "edge_agent.config", "edge_agent.imageio"},
    "edge_agent.measure": {"edge_agent.errors", "edge_agent.util", "edge_agent.config"},
    "edge_agent.position": {"edge_agent.errors", "edge_agent.util", "edge_agent.config"},
    "edge_agent.comms": {"edge_agent.errors", "edge_agent.util", "edge_agent.config"},
    "edge_agent.evaluation": {"edge_agent.errors", "edge_agent.util", "edge_agent.imageio", "edge_agent.detectors",
                              "edge_agent.measure", "edge_agent.config"},
    "edge_agent.service": {"edge_agent.errors", "edge_agent.util", "edge_agent.config", "edge_agent.stats"},
    "edge_agent.updates": {"edge_agent.errors", "edge_agent.util", "edge_agent.config", "edge_agent.contract",
                           "edge_agent.bundle", "edge_agent.detectors", "edge_agent.comms"},
}
AGENT_LAYER = {u for u in ALLOWED} | {"edge_agent.agent"}
ALLOWED["edge_agent.agent"] = AGENT_LAYER - {"edge_agent.agent"}
ALLOWED["edge_agent.demo"] = AGENT_LAYER
ALLOWED["edge_agent.cli"] = AGENT_LAYER | {"edge_agent.demo", "edge_agent"}
ALLOWED["edge_agent"] = set()  # the package's own __init__
ALLOWED["converters"] = {"edge_agent.errors", "edge_agent.util", "edge_agent.contract", "edge_agent.bundle",
                         "edge_agent.detectors", "edge_agent.evaluation", "edge_agent.imageio", "reference_model"}
ALLOWED["reference_model"] = {"edge_agent.errors", "edge_agent.util", "edge_agent.contract", "edge_agent.evaluation",
                              "edge_agent.imageio", "edge_agent.measure", "edge_agent.config"}
ALLOWED["office"] = set()  # the office runs on another machine: nothing from the device side
ALLOWED["bench"] = AGENT_LAYER | {"edge_agent.demo", "edge_agent.cli", "converters", "reference_model", "office"}

PACKAGES = ("edge_agent", "converters", "reference_model", "office", "bench")


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    if parts[0] != "edge_agent" or len(parts) == 1:
        return parts[0]
    return ".".join(parts[:2])


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            for alias in node.names:  # "from edge_agent import util" imports the edge_agent.util unit
                found.add(f"{target}.{alias.name}")
    return found


def dependencies() -> dict[str, dict[str, set[str]]]:
    """unit -> imported unit -> the files that import it."""
    deps: dict[str, dict[str, set[str]]] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            unit = unit_of(module_name(path))
            assert unit is not None
            for target in imports_of(path):
                other = unit_of(target)
                if other is None or other == unit:
                    continue
                if other not in ALLOWED and other.startswith("edge_agent."):
                    other = "edge_agent"  # "from edge_agent import X" where X is a module, not a unit
                deps.setdefault(unit, {}).setdefault(other, set()).add(str(path.relative_to(ROOT)))
    return deps


def test_every_unit_has_rules():
    units = {unit_of(module_name(p)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    assert units - set(ALLOWED) == set(), "add the new package to ALLOWED (and docs/architecture.md)"


def test_imports_follow_the_rules():
    broken = []
    for unit, targets in dependencies().items():
        for other, files in targets.items():
            # "from edge_agent import X" also names the package root: only its own units get that pass
            root_pass = other == "edge_agent" and (unit == "edge_agent" or unit.startswith("edge_agent."))
            if other not in ALLOWED.get(unit, set()) and not root_pass:
                broken.append(f"{unit} -> {other} ({', '.join(sorted(files))})")
    assert broken == [], "imports against docs/architecture.md:\n" + "\n".join(broken)


def test_inference_imports_no_config():
    deps = dependencies().get("edge_agent.detectors", {})
    assert "edge_agent.config" not in deps


def test_no_import_loop_between_units():
    deps = {u: set(t) - {"edge_agent"} for u, t in dependencies().items()}
    seen: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(unit: str, path: list[str]) -> None:
        seen[unit] = 1
        for other in sorted(deps.get(unit, ())):
            if seen.get(other) == 1:
                raise AssertionError("import loop: " + " -> ".join(path + [unit, other]))
            if other not in seen:
                visit(other, path + [unit])
        seen[unit] = 2

    for unit in sorted(deps):
        if unit not in seen:
            visit(unit, [])


def test_no_module_over_450_lines():
    long = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            n = sum(1 for _ in path.open(encoding="utf-8"))
            if n > 450:
                long.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert long == [], "split these modules (one job each):\n" + "\n".join(long)
