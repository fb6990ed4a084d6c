"""Service-level objectives of a load test, and their check against what locust measured.

An SLO is four optional limits: p95 and p99 latency in milliseconds, the failure ratio (non-2xx,
connection errors and bodies that fail validation, over all requests) and the degraded ratio
(answers whose ``degraded`` parameter names a stage, over successful answers). A limit left
``None`` is not checked. They come from a YAML or JSON file, from inline ``key=value`` pairs, or
both (inline wins)::

    p95_ms: 100
    p99_ms: 150
    max_failure_ratio: 0.0
    max_degraded_ratio: 0.01

This module imports no locust, so the CLI, the gate and unit tests can use it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

#: The SLO the project publishes for the local stack (loadtest/slo.yaml holds the same).
DEFAULT_SLO_FILE = Path(__file__).with_name("slo.yaml")


@dataclass(frozen=True)
class SLO:
    """Limits a load test must stay within; ``None`` leaves a limit unchecked.

    Attributes:
        p95_ms: Highest acceptable 95th-percentile response time, ms.
        p99_ms: Highest acceptable 99th-percentile response time, ms.
        max_failure_ratio: Highest acceptable share of failed requests, 0..1.
        max_degraded_ratio: Highest acceptable share of degraded answers among successful ones, 0..1.
        min_requests: Fewest requests for a verdict; fewer is itself a violation (a run that sent
            nothing must not pass).
    """

    p95_ms: float | None = None
    p99_ms: float | None = None
    max_failure_ratio: float | None = None
    max_degraded_ratio: float | None = None
    min_requests: int = 1

    def __post_init__(self) -> None:
        for name in ("p95_ms", "p99_ms"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"SLO {name} must be positive, got {value}")
        for name in ("max_failure_ratio", "max_degraded_ratio"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"SLO {name} must be in [0, 1], got {value}")
        if self.min_requests < 0:
            raise ValueError(f"SLO min_requests must be >= 0, got {self.min_requests}")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> SLO:
        """An SLO from a mapping of field names; unknown keys are an error that names them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown SLO key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if value is None:
                values[key] = None
            elif key == "min_requests":
                values[key] = int(value)
            else:
                values[key] = float(value)
        return cls(**values)

    def merged(self, **overrides: float | int | None) -> SLO:
        """This SLO with the given limits replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        return asdict(self)

    def describe(self) -> str:
        """One line: the limits that are checked."""
        parts = []
        if self.p95_ms is not None:
            parts.append(f"p95 <= {self.p95_ms:g} ms")
        if self.p99_ms is not None:
            parts.append(f"p99 <= {self.p99_ms:g} ms")
        if self.max_failure_ratio is not None:
            parts.append(f"failures <= {self.max_failure_ratio:.2%}")
        if self.max_degraded_ratio is not None:
            parts.append(f"degraded <= {self.max_degraded_ratio:.2%}")
        return ", ".join(parts) or "no limits"


def load_slo(spec: str | Path | None) -> SLO:
    """An SLO from a file (YAML or JSON), inline ``key=value[,key=value]`` pairs, or nothing.

    Raises:
        ValueError: the file is not a mapping, a key is unknown, or a value is out of range.
        FileNotFoundError: ``spec`` looks like a path but no such file exists.
    """
    if spec is None or str(spec) == "":
        return SLO()
    text = str(spec)
    path = Path(text)
    if path.is_file():
        raw = yaml.safe_load(path.read_text()) or {}  # YAML is a superset of JSON
        if not isinstance(raw, dict):
            raise ValueError(f"SLO file {path} must hold a mapping, not {type(raw).__name__}")
        return SLO.from_mapping(raw)
    if "=" in text:
        pairs = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"SLO pair {part!r} is not key=value")
            pairs[key.strip()] = None if value.strip().lower() in ("", "none") else value.strip()
        return SLO.from_mapping(pairs)
    raise FileNotFoundError(f"SLO file {text} does not exist (or give key=value pairs)")


@dataclass(frozen=True)
class LoadStats:
    """What a load test measured for one target (or all of them).

    Attributes:
        requests: Requests sent (successes and failures).
        failures: Failed requests.
        degraded: Successful answers with a non-empty ``degraded`` parameter.
        p50_ms, p95_ms, p99_ms: Response-time percentiles, ms (locust's rounded histogram).
        rps: Mean requests per second over the run.
    """

    requests: int
    failures: int
    degraded: int = 0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    rps: float = 0.0

    @property
    def failure_ratio(self) -> float:
        """Failed share of all requests (0 when none were sent)."""
        return self.failures / self.requests if self.requests else 0.0

    @property
    def degraded_ratio(self) -> float:
        """Degraded share of the successful answers (0 when none succeeded)."""
        ok = self.requests - self.failures
        return self.degraded / ok if ok > 0 else 0.0

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LoadStats:
        """From :meth:`as_dict` output (extra keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    def as_dict(self) -> dict[str, Any]:
        """Plain values (ratios included), for JSON."""
        return {**asdict(self), "failure_ratio": self.failure_ratio,
                "degraded_ratio": self.degraded_ratio}


@dataclass(frozen=True)
class Violation:
    """One missed objective.

    Attributes:
        metric: ``p95_ms``, ``p99_ms``, ``failure_ratio``, ``degraded_ratio`` or ``requests``.
        observed: The measured value.
        limit: The objective.
    """

    metric: str
    observed: float
    limit: float

    def __str__(self) -> str:
        if self.metric == "requests":
            return f"requests {self.observed:g} < minimum {self.limit:g}"
        if self.metric.endswith("_ms"):
            return f"{self.metric} {self.observed:.0f} ms > {self.limit:g} ms"
        return f"{self.metric} {self.observed:.2%} > {self.limit:.2%}"


def check(slo: SLO, stats: LoadStats) -> list[Violation]:
    """The objectives ``stats`` misses, most severe kind first (requests, failures, degraded, p99, p95)."""
    if stats.requests < slo.min_requests:
        return [Violation("requests", stats.requests, slo.min_requests)]
    out = []
    for metric, observed, limit in (
        ("failure_ratio", stats.failure_ratio, slo.max_failure_ratio),
        ("degraded_ratio", stats.degraded_ratio, slo.max_degraded_ratio),
        ("p99_ms", stats.p99_ms, slo.p99_ms),
        ("p95_ms", stats.p95_ms, slo.p95_ms),
    ):
        # A ratio exactly at its limit passes; a tiny float excess from the division does not fail.
        if limit is not None and observed > limit and not math.isclose(observed, limit, abs_tol=1e-12):
            out.append(Violation(metric, float(observed), float(limit)))
    return out


def read_summary(path: Path) -> dict[str, Any]:
    """The JSON summary a locust run wrote (``--summary-json``).

    Keys: ``total`` and ``targets`` (``stable``/``canary`` when split) as :meth:`LoadStats.as_dict`,
    ``by_name`` (requests per locust name), ``slo`` and ``violations``.
    """
    return json.loads(Path(path).read_text())
