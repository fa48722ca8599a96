"""The package stays in units a newcomer can read whole (issue 13): no module in agent/ over 400
lines, no class over 250, and storage never reaching up into the stages that use it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "agent"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250


def _modules() -> list[Path]:
    return sorted(AGENT.rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_no_module_over_400_lines() -> None:
    too_long = {
        _rel(path): lines
        for path in _modules()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not too_long, f"split these modules by responsibility: {too_long}"


def test_no_class_over_250_lines() -> None:
    too_long = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    too_long[f"{_rel(path)}:{node.name}"] = lines
    assert not too_long, f"give part of these classes to a collaborator: {too_long}"


def _imported_agent_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            package = ".".join(path.relative_to(ROOT).with_suffix("").parts[: -node.level])
            found.add(f"{package}.{node.module}" if node.module else package)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "agent" or name.startswith("agent.")}


# Storage is below every stage: it may use the records and rules it stores, never a stage.
STAGES = (
    "agent.ingest",
    "agent.intake",
    "agent.planner",
    "agent.dispatch",
    "agent.compose",
    "agent.submit",
    "agent.health",
    "agent.app",
    "agent.cli",
    "agent.doctor",
    "agent.group",
)


def test_the_outbox_imports_no_stage() -> None:
    reaching_up = {
        _rel(path): sorted(
            name
            for name in _imported_agent_modules(path)
            if any(name == stage or name.startswith(f"{stage}.") for stage in STAGES)
        )
        for path in sorted((AGENT / "outbox").rglob("*.py"))
    }
    reaching_up = {path: names for path, names in reaching_up.items() if names}
    assert not reaching_up, f"the outbox must not import the stages that use it: {reaching_up}"
