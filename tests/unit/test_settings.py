"""Configuration validation: every bad config names the key and the fix."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import annotated_types
import pytest
from pydantic import BaseModel, ValidationError

import agent.settings as settings_package
from agent import policy
from agent.errors import ConfigError
from agent.settings import Settings, load_settings
from tests.unit.conftest import base_config

Writer = Callable[[dict[str, Any]], Path]


def _problems(path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return dict(info.value.problems)


def test_valid_config_loads_with_secret(tmp_path: Path, write_config: Writer) -> None:
    """A complete config loads; the password comes from its file, first line only."""
    settings = load_settings(write_config(base_config(tmp_path)))
    assert settings.smtp.password() == "correct horse battery"
    assert settings.smtp.sender_address == "gw@example.com"
    assert settings.smtp.sender_domain == "example.com"
    assert settings.routes[0].to == ["ops@example.com"]


def test_unknown_nested_key_is_named(tmp_path: Path, write_config: Writer) -> None:
    """A typo in a nested table is refused, naming the full key."""
    doc = base_config(tmp_path)
    doc["mqtt"]["hots"] = "x"
    problems = _problems(write_config(doc))
    assert "unknown key" in problems["mqtt.hots"]


def test_gateway_id_with_a_trailing_newline_is_refused(
    tmp_path: Path, write_config: Writer
) -> None:
    """gateway.id goes into Message-IDs and topics: a trailing newline (which "$" in a regex
    would let through) is refused like any other character outside the rule."""
    doc = base_config(tmp_path)
    doc["gateway"]["id"] = "gw-brno-01\n"
    assert "use only letters" in _problems(write_config(doc))["gateway.id"]


def test_port_25_is_refused(tmp_path: Path, write_config: Writer) -> None:
    """Port 25 (unauthenticated relay SMTP) is refused with the submission ports as the fix."""
    doc = base_config(tmp_path)
    doc["smtp"]["port"] = 25
    assert "587" in _problems(write_config(doc))["smtp.port"]


@pytest.mark.parametrize("value", ["none", "plain", ""])
def test_plaintext_security_is_refused(tmp_path: Path, write_config: Writer, value: str) -> None:
    """There is no plaintext mode: any attempt to configure one is refused."""
    doc = base_config(tmp_path)
    doc["smtp"]["security"] = value
    assert "starttls" in _problems(write_config(doc))["smtp.security"]


def test_missing_security_is_refused(tmp_path: Path, write_config: Writer) -> None:
    """security has no default, so it cannot silently become something unsafe."""
    doc = base_config(tmp_path)
    del doc["smtp"]["security"]
    assert "missing" in _problems(write_config(doc))["smtp.security"]


def test_implicit_tls_port_with_starttls_is_refused(tmp_path: Path, write_config: Writer) -> None:
    """465 with starttls is a mix-up that would hang at connect; the fix names tls."""
    doc = base_config(tmp_path)
    doc["smtp"]["port"] = 465
    assert 'security = "tls"' in _problems(write_config(doc))["smtp"]


def test_route_recipient_outside_allowlist(tmp_path: Path, write_config: Writer) -> None:
    """A route recipient outside the allowlist stops startup, naming the route."""
    doc = base_config(tmp_path)
    doc["routes"][0]["to"] = ["ops@example.com", "attacker@evil.test"]
    problem = _problems(write_config(doc))["routes[0].to"]
    assert "attacker@evil.test" in problem and "allowed_domains" in problem


def test_allowlisted_exact_address_and_subdomain(tmp_path: Path, write_config: Writer) -> None:
    """Exact addresses and *.domain entries extend the allowlist; nothing else does."""
    doc = base_config(tmp_path)
    doc["policy"] = {"allowed_domains": ["*.corp.example"], "allowed_recipients": ["a@b.test"]}
    doc["routes"][0]["to"] = ["a@b.test", "ops@plant.corp.example"]
    settings = load_settings(write_config(doc))
    allow = settings.allowlist
    assert allow.allows("a@b.test")
    assert allow.allows("ops@plant.corp.example")
    assert not allow.allows("ops@corp.example")
    assert not allow.allows("x@b.test")
    assert not allow.allows("ops@plant.corp.example\r\nBcc: x@evil.test")


def test_missing_secret_file(tmp_path: Path, write_config: Writer) -> None:
    """A missing password file is named, with what to do."""
    doc = base_config(tmp_path)
    doc["smtp"]["password_file"] = str(tmp_path / "nope")
    assert "does not exist" in _problems(write_config(doc))["smtp.password_file"]


def test_empty_secret_file_stops_startup(tmp_path: Path, write_config: Writer) -> None:
    """An empty password file is refused at startup, not discovered at the first login."""
    doc = base_config(tmp_path)
    empty = tmp_path / "empty-password"
    empty.write_text("\n")
    empty.chmod(0o600)
    doc["smtp"]["password_file"] = str(empty)
    problems = _problems(write_config(doc))
    assert any("is empty" in text for text in problems.values()), problems


def test_secret_from_credentials_directory(
    tmp_path: Path, write_config: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With systemd's $CREDENTIALS_DIRECTORY, a relative or empty password_file is found there."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "smtp-password").write_text("from-credential")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    doc = base_config(tmp_path)
    doc["smtp"]["password_file"] = ""
    assert load_settings(write_config(doc)).smtp.password() == "from-credential"


def test_unreadable_ca_file(tmp_path: Path, write_config: Writer) -> None:
    """A CA file that is not PEM is refused at startup, not at the first send."""
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    doc = base_config(tmp_path)
    doc["smtp"]["ca_file"] = str(bad)
    assert "CA bundle" in _problems(write_config(doc))["smtp.ca_file"]


def test_environment_overrides_file(
    tmp_path: Path, write_config: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAULTMAIL_SECTION__KEY overrides the file; unrelated FAULTMAIL_ variables are ignored."""
    monkeypatch.setenv("FAULTMAIL_SMTP__PORT", "465")
    monkeypatch.setenv("FAULTMAIL_SMTP__SECURITY", "tls")
    monkeypatch.setenv("FAULTMAIL_CONFIG", "/etc/faultmail/faultmail.toml")
    settings = load_settings(write_config(base_config(tmp_path)))
    assert (settings.smtp.port, settings.smtp.security) == (465, "tls")


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    """Syntax errors and a missing file are config errors, not tracebacks."""
    broken = tmp_path / "broken.toml"
    broken.write_text("[gateway\nid = 1")
    assert "not valid TOML" in str(_problems(broken))
    assert "no such file" in str(_problems(tmp_path / "absent.toml"))


def test_settings_are_immutable(tmp_path: Path, write_config: Writer) -> None:
    """Settings cannot be changed after validation."""
    settings = load_settings(write_config(base_config(tmp_path)))
    with pytest.raises(ValueError, match="frozen"):
        settings.smtp.port = 25


def test_secrets_never_in_repr_or_dump(tmp_path: Path, write_config: Writer) -> None:
    """The password is neither in repr() nor in the config-check dump."""
    settings = load_settings(write_config(base_config(tmp_path)))
    assert "correct horse" not in repr(settings)
    assert "correct horse" not in str(settings.model_dump(mode="json"))


def test_shipped_example_config_is_valid(tmp_path: Path) -> None:
    """config/faultmail.toml, as shipped, validates once its secret file exists."""
    secret = tmp_path / "smtp-password"
    secret.write_text("pw")
    example = Path(__file__).resolve().parents[2] / "config" / "faultmail.toml"
    from agent.signing import keygen

    key = keygen("gw2026", "example.com", tmp_path / "dkim.key")
    text = example.read_text().replace("/etc/faultmail/smtp-password", str(secret))
    text = text.replace("/etc/faultmail/dkim.key", str(key.path))
    path = tmp_path / "faultmail.toml"
    path.write_text(text)
    settings = load_settings(path)
    assert settings.smtp.security == "starttls" and settings.smtp.port == 587
    assert settings.dkim is not None and settings.mail.repeat_window == 600


def test_world_readable_secret_is_warned_about(tmp_path: Path, write_config: Writer) -> None:
    """A password file others can read yields a warning naming the key and the chmod fix."""
    doc = base_config(tmp_path)
    settings = load_settings(write_config(doc))
    assert settings.permission_warnings() == []
    Path(doc["smtp"]["password_file"]).chmod(0o644)
    (warning,) = settings.permission_warnings()
    assert warning.startswith("smtp.password_file:") and "chmod 600" in warning


def test_xoauth2_needs_exactly_one_token_source(tmp_path: Path, write_config: Writer) -> None:
    """auth = "xoauth2" needs [smtp.oauth] with one way to get a token, over https only."""
    doc = base_config(tmp_path)
    doc["smtp"]["auth"] = "xoauth2"
    del doc["smtp"]["password_file"]
    assert "[smtp.oauth]" in str(_problems(write_config(doc)))
    doc["smtp"]["oauth"] = {
        "token_url": "http://login.example.com/token",
        "client_id": "x",
        "client_secret_file": doc["gateway"]["state_dir"],
    }
    assert "https://" in str(_problems(write_config(doc)))
    doc["smtp"]["oauth"] = {"token_file": "/run/token", "token_command": ["/bin/true"]}
    assert "exactly one" in str(_problems(write_config(doc)))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{message:>99999999999}", "at most 200"),
        ("{message:.99999999999}", "at most 200"),
        ("{message:{code}}", "placeholder inside"),
        ("{message.__class__}", "attribute or index"),
        ("{code[0]}", "attribute or index"),
        ("{}", "positional"),
        ("{0}", "positional"),
        ("{messages}", "{message}"),
        ("{message:d}", "cannot be formatted"),
        ("{message", "not a valid format string"),
        ("{message!x}", "conversion"),
    ],
)
def test_subject_format_that_would_fail_at_send_time_is_refused(
    tmp_path: Path, write_config: Writer, value: str, expected: str
) -> None:
    """A subject_format that would raise, or eat memory, when a mail is composed stops startup."""
    doc = base_config(tmp_path)
    doc["mail"] = {"subject_format": value}
    problem = _problems(write_config(doc))["mail.subject_format"]
    assert expected in problem, problem
    assert "{severity}" in problem and "{site}" in problem  # the fix lists what is allowed


@pytest.mark.parametrize(
    "value",
    [
        "https://wiki.example.com/runbooks/{device}",
        "https://wiki.example.com/{code:>1000}",
        "https://wiki.example.com/{code.upper}",
        "https://wiki.example.com/{code}/{}",
    ],
)
def test_runbook_default_with_other_placeholders_is_refused(
    tmp_path: Path, write_config: Writer, value: str
) -> None:
    """runbook_default is formatted with {code} only: anything else is refused at load time."""
    doc = base_config(tmp_path)
    doc["mail"] = {"runbook_default": value}
    problem = _problems(write_config(doc))["mail.runbook_default"]
    assert "{code}" in problem, problem


def test_safe_format_strings_load(tmp_path: Path, write_config: Writer) -> None:
    """Documented placeholders with conversions and bounded widths are accepted unchanged."""
    doc = base_config(tmp_path)
    subject = "{{{site}}} [{severity:^10}] {device!r} {code:.20s}: {message:>200}"
    doc["mail"] = {"subject_format": subject, "runbook_default": "https://w.example/{code}"}
    mail = load_settings(write_config(doc)).mail
    assert (mail.subject_format, mail.runbook_default) == (subject, "https://w.example/{code}")


def test_secret_file_that_is_not_utf8_is_named(tmp_path: Path, write_config: Writer) -> None:
    """A password file that is not UTF-8 stops startup naming the key and the file."""
    doc = base_config(tmp_path)
    Path(doc["smtp"]["password_file"]).write_bytes(b"geheim\xe4\n")
    problem = _problems(write_config(doc))["smtp.password_file"]
    assert doc["smtp"]["password_file"] in problem and "UTF-8" in problem, problem


def test_oauth_client_secret_file_that_is_not_utf8_is_named(
    tmp_path: Path, write_config: Writer
) -> None:
    """The OAuth client secret file is checked the same way, under its own key."""
    doc = base_config(tmp_path)
    secret = tmp_path / "client-secret"
    secret.write_bytes(b"\xff\xfes\x00e\x00c\x00\n")  # saved as UTF-16 by a Windows editor
    doc["smtp"]["auth"] = "xoauth2"
    del doc["smtp"]["password_file"]
    doc["smtp"]["oauth"] = {
        "token_url": "https://login.example.com/token",
        "client_id": "gw",
        "client_secret_file": str(secret),
    }
    problem = _problems(write_config(doc))["smtp.oauth.client_secret_file"]
    assert str(secret) in problem and "UTF-8" in problem, problem


def test_environment_value_that_is_not_utf8_is_refused(
    tmp_path: Path, write_config: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An override holding bytes that are not UTF-8 (a lone surrogate in os.environ) is refused,
    naming the key and the variable, instead of reaching logs, SQLite or a mail."""
    monkeypatch.setenv("FAULTMAIL_GATEWAY__SITE", "Halle \udce4")  # b"Halle \xe4" decoded
    problem = _problems(write_config(base_config(tmp_path)))["gateway.site"]
    assert "FAULTMAIL_GATEWAY__SITE" in problem and "UTF-8" in problem, problem


def test_environment_json_with_surrogate_escape_is_refused(
    tmp_path: Path, write_config: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JSON override whose \\ud800 escape decodes to a lone surrogate is refused too."""
    monkeypatch.setenv("FAULTMAIL_MAIL__RUNBOOKS", '{"E1": "https://w.example/\\ud800"}')
    problems = _problems(write_config(base_config(tmp_path)))
    assert "FAULTMAIL_MAIL__RUNBOOKS" in problems["mail.runbooks.E1"], problems


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    """A config file in Latin-1 is a config error naming the file, not a traceback."""
    path = tmp_path / "faultmail.toml"
    path.write_bytes(b'[gateway]\nid = "gw"\nsite = "Halle S\xfcd"\n')
    problems = _problems(path)
    assert "UTF-8" in problems[str(path)], problems


def test_environment_value_that_is_not_json_is_a_config_error(
    tmp_path: Path, write_config: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A structured override that is not JSON is a config error naming the field."""
    monkeypatch.setenv("FAULTMAIL_MAIL__RUNBOOKS", "E1=https://w.example/e1")
    problems = _problems(write_config(base_config(tmp_path)))
    assert "FAULTMAIL_MAIL__" in problems["mail"] and "JSON" in problems["mail"], problems


def _section_models() -> list[type[BaseModel]]:
    """Every pydantic model the settings package defines (the root Settings included)."""
    found: list[type[BaseModel]] = []
    for info in pkgutil.iter_modules(settings_package.__path__, "agent.settings."):
        module = importlib.import_module(info.name)
        found += [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and issubclass(obj, BaseModel)
            and obj.__module__ == module.__name__
        ]
    return found


def test_every_settings_model_forbids_unknown_keys() -> None:
    """Every section model (and the root) refuses unknown keys, so a typo never passes silently."""
    models = _section_models()
    assert Settings in models and len(models) >= 14
    for model in models:
        assert model.model_config.get("extra") == "forbid", model.__name__
        assert model.model_config.get("frozen") is True, model.__name__


def test_allowlist_is_the_policy_one() -> None:
    """agent.settings re-exports the allowlist that policy applies: one rule, one place."""
    assert settings_package.Allowlist is policy.Allowlist
    assert settings_package.check_address is policy.check_address


def test_allowlist_matches_exact_domains_wildcards_and_addresses() -> None:
    """Exact domains match themselves only, *.domain its subdomains only; listed addresses match."""
    allow = policy.Allowlist(["example.com", "*.corp.example"], ["ext@partner.example"])
    assert allow.allows("ops@example.com")
    assert allow.allows("ops@EXAMPLE.com")
    assert not allow.allows("ops@sub.example.com")
    assert allow.allows("ops@plant.corp.example")
    assert not allow.allows("ops@corp.example")
    assert allow.allows("ext@partner.example")
    assert not allow.allows("other@partner.example")
    assert not allow.allows("Ops <ops@example.com>")


def _numeric_fields() -> list[tuple[type[BaseModel], str, type]]:
    """(model, field, int or float) for every number field of every settings model."""
    found = []
    for model in _section_models():
        for name, info in model.model_fields.items():
            kinds = {info.annotation, *get_args(info.annotation)} & {int, float}
            assert len(kinds) <= 1, (model.__name__, name)
            if kinds and info.annotation is not bool:
                found.append((model, name, kinds.pop()))
    return found


def _field_errors(model: type[BaseModel], name: str, value: object) -> list[str]:
    """The validation errors that `value` alone gives field `name` of `model`."""
    try:
        model.model_validate({name: value})
    except ValidationError as exc:
        return [err["msg"] for err in exc.errors() if err["loc"] == (name,)]
    return []


def test_every_number_in_the_settings_is_bounded_and_finite() -> None:
    """Every int and float of every settings model has an upper bound and refuses inf and nan:
    no key can ask for a window, a size or a count that its protocol or its meaning cannot hold."""
    fields = _numeric_fields()
    names = {f"{model.__name__}.{name}" for model, name, _ in fields}
    assert {"MqttSettings.session_expiry", "FloodSettings.rate", "SmtpSettings.port"} <= names
    assert len(fields) >= 30
    unbounded = []
    for model, name, kind in fields:
        metadata = model.model_fields[name].metadata
        if not any(isinstance(m, annotated_types.Le | annotated_types.Lt) for m in metadata):
            unbounded.append(f"{model.__name__}.{name}")
        # Beyond any bound (TOML's largest integer, a float near its limit) and not a number.
        hostile: list[object] = [2**63 - 1, float("inf"), float("nan"), -float("inf")]
        if kind is float:
            hostile.append(1e300)
        for value in hostile:
            assert _field_errors(model, name, value), (model.__name__, name, value)
    assert unbounded == []


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("mqtt", "session_expiry", 2**32),
        ("flood", "rate", float("inf")),
        ("flood", "block_window", float("inf")),
        ("flood", "rate", float("nan")),
        ("flood", "burst", 2**63 - 1),
        ("outbox", "keep_days", float("inf")),
        ("delivery", "max_age", float("nan")),
    ],
)
def test_unbounded_numbers_are_refused_naming_the_key(
    tmp_path: Path, write_config: Writer, section: str, key: str, value: float
) -> None:
    """inf, nan and values past what the protocol can encode stop startup, naming the key."""
    doc = base_config(tmp_path)
    doc.setdefault(section, {})[key] = value
    problems = _problems(write_config(doc))
    assert f"{section}.{key}" in problems, problems


def test_session_expiry_at_the_mqtt_maximum_loads(tmp_path: Path, write_config: Writer) -> None:
    """2^32-1, MQTT 5's largest Session Expiry Interval ("never expires"), is accepted."""
    doc = base_config(tmp_path)
    doc["mqtt"]["session_expiry"] = 2**32 - 1
    assert load_settings(write_config(doc)).mqtt.session_expiry == 2**32 - 1


@pytest.mark.parametrize(
    ("mail", "key", "expected"),
    [
        (
            {"runbook_default": "javascript:alert(document.cookie)//{code}"},
            "runbook_default",
            "https",
        ),
        ({"runbook_default": "file:///srv/runbooks/{code}"}, "runbook_default", "https"),
        ({"runbook_default": "//wiki.example.com/{code}"}, "runbook_default", "https"),
        ({"runbook_default": "wiki.example.com/{code}"}, "runbook_default", "https"),
        ({"runbook_default": "https://{code}.wiki.example.com/"}, "runbook_default", "host"),
        ({"runbook_default": "https://wiki.example.com@{code}/"}, "runbook_default", "host"),
        ({"runbook_default": "https://wiki.example.com{code}"}, "runbook_default", "host"),
        ({"runbook_default": "https:///{code}"}, "runbook_default", "host"),
        ({"runbook_default": "https://wiki.example.com/a b/{code}"}, "runbook_default", "space"),
        ({"runbooks": {"E042": "javascript:alert(1)"}}, "runbooks", "E042"),
        ({"runbooks": {"E042": "data:text/html,<script>alert(1)</script>"}}, "runbooks", "https"),
        ({"runbooks": {"E7": "ftp://files.example.com/e7.pdf"}}, "runbooks", "https"),
        ({"runbooks": {"E7": "https://wiki.example.com/e7\n"}}, "runbooks", "space"),
    ],
)
def test_runbook_links_must_be_http_urls(
    tmp_path: Path, write_config: Writer, mail: dict[str, Any], key: str, expected: str
) -> None:
    """Runbook links are https:// or http:// URLs with a fixed host ({code} only after it);
    javascript:, data:, file: and scheme-relative links stop startup, naming the key."""
    doc = base_config(tmp_path)
    doc["mail"] = mail
    problem = _problems(write_config(doc))[f"mail.{key}"]
    assert expected in problem and "https://" in problem, problem


def test_http_and_https_runbook_links_load(tmp_path: Path, write_config: Writer) -> None:
    """https:// and http:// links, {code} in the path, query or fragment, load unchanged."""
    doc = base_config(tmp_path)
    doc["mail"] = {
        "runbook_default": "https://wiki.example.com/runbooks/{code}?src=faultmail",
        "runbooks": {
            "E7": "http://intranet.plant.example:8080/pumps#low-flow",
            "E8": "https://wiki.example.com/search?q=E8",
        },
    }
    mail = load_settings(write_config(doc)).mail
    assert mail.runbook_default == "https://wiki.example.com/runbooks/{code}?src=faultmail"
    assert mail.runbooks["E7"] == "http://intranet.plant.example:8080/pumps#low-flow"
    doc["mail"] = {"runbook_default": "https://wiki.example.com/?fault={code}"}
    assert load_settings(write_config(doc)).mail.runbook_default.endswith("?fault={code}")
