"""The daemon runs on a plain copy of the validated configuration, without pydantic (issue 18):
the copy answers every field, property and method of the models alike, secrets included, and
survives the hand-over across exec into an interpreter that never imports pydantic."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path, PosixPath
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_settings import BaseSettings

import agent.settings as settings_package
from agent.settings import Settings, load_settings
from agent.settings.loading import plain_copy
from agent.settings.plain import Plain, PlainSettings, hand_over, read_handed_over
from agent.signing import keygen
from tests.unit.conftest import base_config

Writer = Callable[[dict[str, Any]], Path]
REPO = Path(__file__).resolve().parents[2]


def _secret(tmp_path: Path, name: str, value: str) -> str:
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def _full(tmp_path: Path) -> dict[str, Any]:
    """Every section set, with secrets for MQTT and SMTP, DKIM, a group and a window."""
    doc = base_config(tmp_path)
    doc["mqtt"].update(username="gw", password_file=_secret(tmp_path, "mqtt-pw", "mqtt secret"))
    keygen("s1", "example.com", tmp_path / "dkim.key")
    doc["dkim"] = {
        "domain": "example.com",
        "selector": "s1",
        "private_key_file": str(tmp_path / "dkim.key"),
    }
    doc["cluster"] = {"mode": "shared", "group": "brno-gw", "instance": "gw-a"}
    doc["maintenance"] = [
        {
            "name": "night",
            "reason": "pump service",
            "devices": ["pump-*"],
            "days": ["mon", "thu"],
            "start": "02:00",
            "duration": "90m",
            "timezone": "Europe/Prague",
        }
    ]
    return doc


def _oauth(tmp_path: Path) -> dict[str, Any]:
    doc = base_config(tmp_path)
    doc["smtp"].update(auth="xoauth2", password_file="")
    doc["smtp"]["oauth"] = {
        "token_url": "https://login.example.com/{tenant_id}/token",
        "tenant_id": "t-1",
        "client_id": "c-1",
        "client_secret_file": _secret(tmp_path, "oauth-secret", "oauth secret"),
    }
    return doc


def _behaviour(model_class: type[BaseModel]) -> list[str]:
    """Public properties and methods our model classes add to pydantic's."""
    base = BaseSettings if issubclass(model_class, BaseSettings) else BaseModel
    return [
        name
        for name in dir(model_class)
        if not name.startswith("_")
        and name not in model_class.model_fields
        and not hasattr(base, name)
        and not isinstance(inspect.getattr_static(model_class, name), classmethod | staticmethod)
    ]


def _by_identity(value: object) -> bool:
    """A value object without == of its own (Allowlist): compare its attributes instead."""
    return type(value).__eq__ is object.__eq__ and hasattr(value, "__dict__")


def _same(model: Any, copy: Any, where: str) -> int:
    """Assert the copy holds what the model holds; the number of values compared."""
    if isinstance(model, BaseModel):
        assert isinstance(copy, Plain), where
        compared = 0
        for name in type(model).model_fields:
            compared += _same(getattr(model, name), getattr(copy, name), f"{where}.{name}")
        for name in _behaviour(type(model)):
            mine, theirs = getattr(model, name), getattr(copy, name)
            if callable(mine):
                assert not inspect.signature(mine).parameters, f"{where}.{name}() takes arguments"
                mine, theirs = mine(), theirs()
            if _by_identity(mine):
                mine, theirs = (type(mine), vars(mine)), (type(theirs), vars(theirs))
            assert mine == theirs, f"{where}.{name}"
            compared += 1
        return compared
    if isinstance(model, list | tuple):
        assert type(copy) is type(model) and len(copy) == len(model), where
        pairs = enumerate(zip(model, copy, strict=True))
        return sum(_same(m, c, f"{where}[{i}]") for i, (m, c) in pairs)
    assert copy == model and type(copy) is type(model), where
    return 1


@pytest.mark.parametrize(
    ("doc", "secrets"),
    [(_full, ["correct horse battery", "mqtt secret"]), (_oauth, ["oauth secret"])],
)
def test_the_plain_copy_answers_like_the_models(
    tmp_path: Path, write_config: Writer, doc: Callable[[Path], dict[str, Any]], secrets: list[str]
) -> None:
    """Every field (same value, same type), every property and every method without
    arguments gives the same answer on the copy as on the validated model, secrets too."""
    settings = load_settings(write_config(doc(tmp_path)))
    copy = plain_copy(settings)
    assert isinstance(copy, PlainSettings)
    assert _same(settings, copy, "settings") > 100
    assert copy.secrets() == settings.secrets() == secrets
    assert not [secret for secret in secrets if secret in repr(copy)]
    with pytest.raises(AttributeError, match="read-only"):
        copy.smtp.host = "elsewhere"


def test_the_daemon_reads_the_copy_without_importing_pydantic(
    tmp_path: Path, write_config: Writer
) -> None:
    """Handed over as `faultmail run` does it (an anonymous memory file inherited across
    exec), the copy is read by an interpreter that imports the whole daemon but no pydantic."""
    settings: Settings = load_settings(write_config(_full(tmp_path)))
    fd = hand_over(plain_copy(settings))
    try:
        probe = (
            "import sys, agent.app\n"
            "from agent.settings.plain import read_handed_over\n"
            "s = read_handed_over(int(sys.argv[1]))\n"
            "print(s.smtp.password(), s.mqtt.password(), s.cluster.grouped, s.outbox_path,\n"
            "      s.maintenance[0].window().duration, s.dkim.selector,\n"
            "      sorted(m for m in sys.modules if m.split('.')[0].startswith('pydantic')))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe, str(fd)],
            pass_fds=(fd,),
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    finally:
        os.close(fd)
    state = tmp_path / "state" / "outbox.db"
    assert out.split() == [
        "correct",
        "horse",
        "battery",
        "mqtt",
        "secret",
        "True",
        str(state),
        "5400.0",
        "s1",
        "[]",
    ]


def test_the_package_names_each_export_once_for_both_ways_of_importing_it() -> None:
    """agent.settings imports its names on first use (so the daemon can import its plain
    modules without the models): the names the type checker sees are the names it resolves,
    and each resolves to the class or function of its module."""
    tree = ast.parse(Path(settings_package.__file__ or "").read_text())
    guarded = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
    )
    typed = {
        (node.module, alias.name)
        for node in guarded.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert typed == {(module, name) for name, module in settings_package._HOME_OF.items()}
    for module, name in typed:
        assert getattr(settings_package, name) is getattr(
            importlib.import_module(module or ""), name
        )
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        _ = settings_package.Nothing


def test_a_crafted_hand_over_is_refused_not_run(tmp_path: Path) -> None:
    """The hand-over is read from a descriptor named in the environment: whoever can set that
    variable for a faultmail process must not get code run by it. A pickle that would call a
    function (here: create a file) is refused before anything runs; only the plain classes,
    paths, dates and the alert severities may be rebuilt."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    class Sneaky:  # getattr is allowed for enum members only: not for a method of a path
        def __reduce__(self) -> tuple[Any, ...]:
            return (getattr, (PosixPath, "touch"))

    for hostile, refusal in ((Evil(), r"pathlib\.Path\.touch"), (Sneaky(), r"PosixPath.*touch")):
        fd = os.memfd_create("faultmail-settings", 0)
        os.write(fd, pickle.dumps(hostile))
        os.lseek(fd, 0, os.SEEK_SET)
        with pytest.raises(pickle.UnpicklingError, match=f"may not rebuild .*{refusal}"):
            read_handed_over(fd)
    assert not marker.exists()
