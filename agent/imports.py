"""Importing third-party modules without the optional extras they load but we never use, and
setting their attributes for a while (where agent.canonical and agent.mqtt_properties replace
a library's own functions, tests compare with the originals).

dkimpy and paho-mqtt both import dnspython's resolver when they load, if it is installed:
dkimpy to look up keys when verifying, paho for `connect_srv`. The daemon does neither (only
the doctor queries DNS, and it imports dnspython itself), and the resolver costs about 3 MB
resident on a gateway, so it is hidden while they load.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

_HIDDEN = ("dns",)


def without_dnspython(name: str) -> Any:
    """Import module `name` as if dnspython were not installed (unless it is loaded already).

    Code that later needs DNS from such a module must pass its own lookup function.
    """
    if name in sys.modules or any(h in sys.modules for h in _HIDDEN):
        return importlib.import_module(name)
    for hidden in _HIDDEN:
        sys.modules[hidden] = None  # type: ignore[assignment]  # `import dns...` now fails
    try:
        return importlib.import_module(name)
    finally:
        for hidden in _HIDDEN:
            del sys.modules[hidden]


@contextmanager
def attributes_set(values: Mapping[tuple[Any, str], Any]) -> Iterator[None]:
    """Each (owner, name) set to its value for the duration, then back to what it was."""
    current = {key: getattr(*key) for key in values}
    for (owner, name), value in values.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name), value in current.items():
            setattr(owner, name, value)
