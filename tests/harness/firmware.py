"""firmware-sim from the test suite: its path, and the module loaded by path (the folder name
has a dash, so it is not importable as a package)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.harness.daemon import REPO_ROOT

FIRMWARE_SIM = REPO_ROOT / "firmware-sim" / "firmware_sim.py"


def load_firmware_sim() -> ModuleType:
    """Import firmware-sim/firmware_sim.py once and return the module."""
    module = sys.modules.get("firmware_sim")
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location("firmware_sim", FIRMWARE_SIM)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["firmware_sim"] = module  # dataclasses look their module up while loading
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["firmware_sim"]
        raise
    return module
