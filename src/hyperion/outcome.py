"""What one attempt at a request can end in, and how long each of its steps took."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hyperion.errors import Code, ErrorInfo
from hyperion.metrics import METRICS
from hyperion.records import State

if TYPE_CHECKING:
    from hyperion.land_stage import Place
    from hyperion.landing import Lander


class Failed(Exception):
    """The request cannot land: a final outcome, not an error of hyperion's."""

    def __init__(self, code: Code, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.info = ErrorInfo(code=code, message=message, path=path)


class Retry(Exception):
    """Try again later (the target moved, or something transient went wrong).

    A lost race to land (``race=True``) is progress, not failure: it does not count against
    ``max_attempts``, only against the safety cap MAX_RACES."""

    def __init__(self, info: ErrorInfo, delay_s: float | None = None, *,
                 race: bool = False) -> None:
        super().__init__(info.message)
        self.info = info
        self.delay_s = delay_s
        self.race = race


@dataclass(frozen=True)
class Landing:
    """A checked commit still to land: ``place`` (its target and commit) by ``lander``,
    from ``tip``, the commit it was applied onto, once its record holds where it applied and
    its check results (written behind by the worker: RecordStore.written)."""

    place: Place
    lander: Lander
    tip: str


@dataclass(frozen=True)
class Result:
    """A green attempt: landed (on ``ref``, or the target when None), or verified (dry run);
    or checked and still to land (``landing``), by the worker's landing stage."""

    state: State
    commit: str
    ref: str | None = None
    landing: Landing | None = None


@dataclass
class Timings:
    """Seconds per step of one attempt, in the order the steps first ran."""

    steps: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.steps[name] = round(self.steps.get(name, 0.0) + seconds, 4)
        stage = name.split(":", 1)[0]
        METRICS.observe("hyperion_stage_seconds", seconds, stage=stage)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - started)

    def describe(self) -> str:
        return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self.steps.items())
