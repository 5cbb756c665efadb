"""The watchdog's knobs and what it says: `Policy` (a JobSpec's `watchdog` section) and `Verdict`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from service.spec import WatchdogSpec

_SPEC_DEFAULTS = WatchdogSpec.model_fields


@dataclass(frozen=True)
class Policy:
    """The watchdog's knobs (a JobSpec's `watchdog` section, minus what the detector ignores)."""

    # The knobs a JobSpec sets take their defaults from WatchdogSpec, where they are declared.
    spike_threshold: float = _SPEC_DEFAULTS["spike_threshold"].default
    """Relative rise over the recent trend that counts as a spike."""
    drop_threshold: float = _SPEC_DEFAULTS["drop_threshold"].default
    """Relative fall under the recent trend that counts as a drop."""
    recover_window_steps: int = _SPEC_DEFAULTS["recover_window_steps"].default
    """Steps a spike may take to come back before it is a divergence."""
    recover_tolerance: float = 0.05
    """How close to the trend (relative) a spike must come back to count as recovered."""
    min_history: int = 10
    """Points a series needs before it is judged."""
    ppl_rise_evals: int = 3
    """Consecutive rising evals of one channel's PPL that raise an alert."""

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"watchdog {spec.name} must be a positive number, got {value!r}")
        if self.drop_threshold >= 1:
            raise ValueError(f"watchdog drop_threshold must be below 1, got {self.drop_threshold}")

    @classmethod
    def from_spec(cls, watchdog: Any) -> Policy:
        """From a JobSpec's `watchdog` section (a mapping or the model); other keys are ignored."""
        if watchdog is None:
            return cls()
        if hasattr(watchdog, "model_dump"):
            watchdog = watchdog.model_dump()
        if not isinstance(watchdog, Mapping):
            raise ValueError(f"a watchdog section is a mapping, got {type(watchdog).__name__}")
        known = {spec.name for spec in fields(cls)}
        return cls(**{key: value for key, value in watchdog.items() if key in known})


@dataclass(frozen=True)
class Verdict:
    """One anomaly: what, where, and what to do about it."""

    job: str
    attempt: int
    step: int
    kind: str  # spike, divergence, nonfinite, drop, ppl_rise
    action: str  # alert or rollback
    channel: str  # "all" for the total loss
    evidence: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
