"""The watchdog: judges each job's loss curves and says when to alert or roll back."""

from service.watchdog.detector import Detector, Policy, Verdict

__all__ = ["Detector", "Policy", "Verdict"]
