"""compose's bytes are pinned: 50 varied mails (every kind, en/cs/de, ASCII subjects, hostile and
non-ASCII device text, threads, acks, late and stale, digests past their caps) serialise to
exactly the bytes they did before compose was optimised (issue 18).

Only the MIME boundary is masked: the email package draws it at random per serialisation. Date
and Message-ID come from the mail and are pinned too.

A deliberate change of a template or header must update GOLDEN; print the new table with
    .venv/bin/python -m tests.unit.test_compose_golden
and say in the commit why the bytes changed.
"""

from __future__ import annotations

import hashlib
import random
import re
from email import message_from_bytes, policy

import pytest

from agent.compose import ComposeContext, compose, load_templates
from agent.models import Alert, FaultState, Mail, MailKind, Severity

T0 = 1_796_095_140.0  # 2026-12-01 03:19:00 UTC
_BOUNDARY = re.compile(rb"={15}\d{19}==")
_CONTEXTS: dict[tuple[str, str, bool], ComposeContext] = {}
_TEXTS = (
    "Overpressure",
    "Přetlak v okruhu 3 – ventil zavřený",
    "Überdruck im Kreislauf ß",
    "x\r\nBcc: evil@evil.test\r\n=?UTF-8?Q?=0A?=Bcc: e2@evil.test\x00\u2028Y",
    "<script>alert(1)</script> & \"quotes\" 'single'",
    "y" * 300,
    "温度センサー異常 🔥",
    "=?utf-8?b?Zm9v?= trailing space ",
    "",
)
_CODES = ("E042", "E1\r\nX-Evil: 1", "ÜBER-7", "../../admin?x=1#", ".", "c" * 90)
_UIDS = ("pump-17", "kompresor-č2", "dev\u202eevil", "u" * 80)


def _ctx(language: str, zone: str, ascii_subject: bool) -> ComposeContext:
    key = (language, zone, ascii_subject)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = ComposeContext(
            sender="Brána Čtvrtá <gw@example.com>" if language == "cs" else "GW <gw@example.com>",
            gateway_id="gw-1",
            site="Brno" if language != "de" else "",
            timezone=zone,
            runbooks={"E042": "https://wiki.example.com/E042"},
            runbook_default="https://wiki.example.com/runbooks/{code}",
            templates=load_templates("", language),
            language=language,
            ascii_subject=ascii_subject,
        )
    return _CONTEXTS[key]


def _alert(rng: random.Random, i: int, at: float, uid: str | None = None) -> Alert:
    details: dict[str, str | int | float] = rng.choice(
        [{}, {"bar": 12.5}, {"bar": 1234567.25, "count": 10_000, "ok": "yes"}, {"ž": "ř\r\n"}]
    )
    return Alert(
        id=100 + i,
        topic="devices/x/fault",
        uid=uid or rng.choice(_UIDS),
        seq=rng.choice([None, i, 2**40]),
        code=rng.choice(_CODES),
        severity=rng.choice(list(Severity)),
        fault_state=rng.choice([FaultState.ACTIVE, FaultState.ACTIVE, FaultState.RESOLVED]),
        message=rng.choice(_TEXTS),
        details=details,
        device_ts=rng.choice([None, at - 5.25]),
        received_at=at,
    )


def _notice(rng: random.Random, kind: MailKind) -> dict[str, object]:
    if kind is MailKind.SILENCE_NOTICE:
        notice: dict[str, object] = {
            "silence_id": 3,
            "scope": "device pump-*",
            "device": "pump-*",
            "code": rng.choice([None, "E04?"]),
            "author": "novák",
            "reason": rng.choice(_TEXTS),
            "starts_at": T0,
            "ends_at": T0 + 7200,
            "event": rng.choice(["started", "ended"]),
            "ended_at": T0 + 3600,
            "ended_by": rng.choice([None, "dvořák"]),
            "summary": [
                {
                    "uid": "pump-1",
                    "code": "E042",
                    "count": rng.choice([1, 3, 5]),
                    "first_at": T0 + 60,
                    "last_at": T0 + 1800,
                    "last_state": "active",
                    "severity": "error",
                    "message": rng.choice(_TEXTS),
                }
            ],
            "still_active": rng.choice([[], ["pump-1 E042 (alert 12)"]]),
        }
        return notice
    return {
        "cause": rng.choice(["flood", "code_rotation", "", "bad_payload"]),
        "blocked": rng.choice([True, False]),
        "uid": rng.choice(_UIDS),
        "topic": "devices/rogue/fault\r\nBcc: x",
        "started_at": T0,
        "blocked_at": rng.choice([T0 + 2, "?"]),
        "rate_per_s": rng.choice([33.3, 1200, "n/a"]),
        "count": rng.choice([100, 1, 12345]),
        "samples": rng.choice([["{}", "\x00\xff"], [], "x"]),
        "reason": rng.choice(
            [
                "more than 100 messages within 10 s",
                "code rotation: 30 distinct fault codes within 60.0 s (limit 20); not blocked, "
                "its mails are held to 5 per ",
                "odd reason",
            ]
        ),
    }


def _case(i: int) -> tuple[Mail, ComposeContext, float]:
    rng = random.Random(i)
    kind = list(MailKind)[i % len(MailKind)] if i < 14 else rng.choice(list(MailKind))
    created = T0 + rng.choice([0.0, 0.5, 1.999999, 86400.25])
    if kind is MailKind.DIGEST:
        count = rng.choice([3, 60, 400])
        uids = [f"dev-{n}" for n in range(rng.choice([2, 45]))]
        alerts = tuple(_alert(rng, n, created - 100 + n, rng.choice(uids)) for n in range(count))
    elif kind in (MailKind.ALERT, MailKind.FOLLOWUP, MailKind.RESOLVED):
        alerts = tuple(_alert(rng, n, created - 3 + n * 0.1) for n in range(rng.choice([1, 1, 4])))
    else:
        alerts = ()
    notice = _notice(rng, kind) if not alerts else None
    if notice is None and rng.random() < 0.3:
        notice = {"acknowledged": {"by": "novák", "at": T0 + 30, "note": rng.choice(_TEXTS)}}
    mail = Mail(
        id=i + 1,
        message_id=f"<faultmail.gw-1.abc.{i + 1}@example.com>",
        created_at=created,
        recipients=rng.choice([("ops@example.com",), ("a@example.com", "Bé <b@example.com>")]),
        attempts=0,
        alerts=alerts,
        kind=kind,
        thread_root=rng.choice([None, f"<faultmail.gw-1.abc.{i + 1}@example.com>", "<t.1@x>"]),
        opened_at=rng.choice([None, created - 5000]),
        suppressed_before=rng.choice([0, 0, 1, 7]),
        notice=notice,
    )
    ctx = _ctx(
        rng.choice(["en", "en", "cs", "de"]),
        rng.choice(["UTC", "Europe/Prague", "America/New_York"]),
        rng.random() < 0.2,
    )
    now = created + rng.choice([1.0, 59.0, 3 * 3600.0, 5 * 86400.0])
    return mail, ctx, now


def composed(i: int) -> bytes:
    mail, ctx, now = _case(i)
    return _BOUNDARY.sub(b"=BOUNDARY=", compose(mail, ctx, now).as_bytes())


GOLDEN: dict[int, str] = {
    0: "6052ae6a55cc82dbbe46c12b5cd05f13",
    1: "79e28c276d7532120ee08995fdf944fd",
    2: "4ff0ecb56de4b8c52f24e163971259c3",
    3: "9243af1c4e06cf93f3aea81484d337e3",
    4: "f8bb6785a5505b9f461781999cb4e792",
    5: "3f6a45147bc6d3b9d2ec3bb04f4b7336",
    6: "767cf18c7fe95d2154f7820e611afe01",
    7: "364f04ccb8da7fb6b3f3a343860d7b62",
    8: "9615ff5bba42ff9dff7d382fe391108e",
    9: "a71de4654e26203bd833a829a648616f",
    10: "45588329d2978041c151811a7e97a86b",
    11: "97324f1db8b9f194d38a152774065272",
    12: "f3969e74b3f706056de28f547e22029d",
    13: "9458154db8c25c789578bd5f83e55496",
    14: "9e300cffb0e163b1b75ca929fe2d9ab8",
    15: "df9a52ef63235b8521f502be877a6b97",
    16: "7a4452e30d5705298b0e8ad055265236",
    17: "9de4726f618df587dedf4a04f4a00e3a",
    18: "99c2595b4d12f297a6571cac5d804b56",
    19: "5b7ec56939d74b5accc8db6feb301b91",
    20: "c80ee2b154a657879af6c8d3771efb91",
    21: "a1e1be97bed5372866a4897bb4a9ba1a",
    22: "0534165177fb15b2f738fc95205453ff",
    23: "8a942ddebebfc265f42bf285aa2eb532",
    24: "0d73583b06a9d23ceabf6b18808fecca",
    25: "556db6247a31fdbc3a04f2afa3576912",
    26: "561c6ba3e61d53796cdfd165d90b79bc",
    27: "0f7b6a20de64e95d0df8f3bad757a6f2",
    28: "34c41578c67950022a92e24f7bb63147",
    29: "76323f6c11e73126dec1e956b9720c98",
    30: "d883b225b34ea3a411192405f32382e1",
    31: "8b8d1a71184cb6d4d4b816e43d73d4f7",
    32: "70ccb8fc501d65ee6e395d1e88234d11",
    33: "2386dbb15d000af8b39b2be74e0eae52",
    34: "0ce4f9b0321359a2e67b751d7bd17e4b",
    35: "7997495d98057510b3aa3d12403bea27",
    36: "8ce694d598fec0d34a87d00f41d8bb79",
    37: "b460283f11be3ca5bbca588a67a57b0a",
    38: "dd115aa2f1307ba83507fcfa7423e59a",
    39: "c234aafb3b7716400be8f629df245e1f",
    40: "a4a955224aa12c63f8cc4a03592579d9",
    41: "889f251f9a989871e3b0d4afc937c735",
    42: "76017fa643749bef71ea528ec7799d13",
    43: "73c0c1864320a902761ccf4d2bb9f839",
    44: "2f9554521ac57968bc57fcccf8e8870b",
    45: "88c3c1ff66bf045a53460d262b29d898",
    46: "c5d1acd4ab7a61092c218dd7b01ab730",
    47: "30940ee1e4a2c7a284adad234dcc08a4",
    48: "db8a3e979886515ffb95fc854cc1e605",
    49: "2435bcea5e0e3186633cb76e7b94fd50",
}


@pytest.mark.parametrize("i", range(50))
def test_compose_bytes_unchanged(i: int) -> None:
    """Case i serialises to its pinned bytes (the message names the case to look at)."""
    raw = composed(i)
    assert hashlib.sha256(raw).hexdigest()[:32] == GOLDEN[i], raw.decode("ascii")


def test_cases_are_varied() -> None:
    """The 50 cases cover every kind, every language and every top-level header compose sets,
    so the pinned bytes cover what compose does (not 50 copies of one mail)."""
    kinds, languages, headers = set(), set(), set()
    for i in range(50):
        mail, ctx, _now = _case(i)
        kinds.add(mail.kind)
        languages.add((ctx.language, ctx.ascii_subject))
        headers.update(message_from_bytes(composed(i), policy=policy.SMTP).keys())
    assert kinds == set(MailKind)
    assert languages >= {("en", False), ("cs", False), ("de", False), ("cs", True)}
    assert headers >= {"In-Reply-To", "X-Faultmail-Silence", "X-Faultmail-Code", "MIME-Version"}


if __name__ == "__main__":
    for case in range(50):
        print(f"    {case}: {hashlib.sha256(composed(case)).hexdigest()[:32]!r},")
