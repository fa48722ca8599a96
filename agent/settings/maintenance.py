"""`[[maintenance]]`: recurring maintenance windows, each a set of silences (source
'maintenance') the daemon stores as its occurrences come (agent.silences.Window)."""

from __future__ import annotations

from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from agent.settings.behaviour import MaintenanceBehaviour
from agent.settings.validation import Section
from agent.silences import MAX_WINDOW_S, check_pattern, parse_duration, parse_hhmm

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class MaintenanceWindow(MaintenanceBehaviour, Section):
    """One recurring window: devices (and codes) silenced on `days` from `start` for
    `duration` or until `end`, local time in `timezone`."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    reason: Annotated[str, Field(min_length=1, max_length=200)]
    devices: Annotated[list[str], Field(min_length=1, max_length=100)]
    codes: Annotated[list[str], Field(min_length=1, max_length=100)] = ["*"]  # noqa: RUF012 (see Section)
    days: Annotated[list[Day], Field(min_length=1, max_length=7)]
    start: str
    # One of the two: a duration ("2h", "90m", "1d"; at most 7 days) or an end time "HH:MM"
    # (the next day when not after start).
    duration: str | None = None
    end: str | None = None
    timezone: str = "UTC"

    @field_validator("devices", "codes")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        return [check_pattern(p, "maintenance") for p in value]

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str | None) -> str | None:
        if value is not None:
            parse_hhmm(value)
        return value

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None and parse_duration(value) > MAX_WINDOW_S:
            raise ValueError("a maintenance window lasts at most 7 days")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (e.g. Europe/Prague)") from None
        return value

    @model_validator(mode="after")
    def _one_end(self) -> MaintenanceWindow:
        if (self.duration is None) == (self.end is None):
            raise ValueError("give exactly one of duration and end")
        return self
