"""Every PromQL expression the dashboards hold, the metric names in one, and Grafana's
template variables filled in the way Grafana would before it sends a query."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "scripts" / "dashboards.py"
DASHBOARDS_DIR = ROOT / "helm" / "pretrain-orchestrator" / "dashboards"


def load_generator() -> ModuleType:
    """scripts/dashboards.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("pretrain_dashboards", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Query:
    dashboard: str
    where: str  # "panel 'Loss by channel' A", "annotation 'Verdicts'", "variable 'job'"
    expr: str
    instant: bool = False

    def __str__(self) -> str:
        return f"{self.dashboard}: {self.where}"


def panels(board: dict) -> list[dict]:
    """Every panel, those inside rows included."""
    found = []
    for panel in board.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def variable_expr(query: str) -> str:
    """The PromQL inside a Grafana Prometheus variable query."""
    if match := re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.S):
        return match.group(1)
    if match := re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S):
        return match.group(1)
    raise ValueError(f"not a Prometheus variable query this test knows: {query!r}")


def queries(dashboards: dict[str, dict]) -> list[Query]:
    """Panel targets, annotations and query variables of every dashboard."""
    found = []
    for uid, board in sorted(dashboards.items()):
        for panel in panels(board):
            for target in panel.get("targets", []):
                where = f"panel {panel['title']!r} {target['refId']}"
                found.append(Query(uid, where, target["expr"], bool(target.get("instant"))))
        for annotation in board.get("annotations", {}).get("list", []):
            if annotation.get("expr"):
                found.append(Query(uid, f"annotation {annotation['name']!r}", annotation["expr"]))
        for variable in board.get("templating", {}).get("list", []):
            if variable["type"] == "query":
                found.append(Query(uid, f"variable {variable['name']!r}", variable_expr(variable["query"]), instant=True))
    return found


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLES = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENTIFIER = re.compile(r"(?<![\w.:])[a-zA-Z_:][\w:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: not its functions, keywords, labels or variables."""
    text = _STRINGS.sub(" ", expr)
    for pattern in (_MATCHERS, _RANGES, _GROUPING, _VARIABLES):
        text = pattern.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        if word.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue  # an operator, or a function or aggregation being called
        names.add(word)
    return names


_TEMPLATE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def fill_in(expr: str, values: dict[str, str]) -> str:
    """Grafana's substitution of `$name` / `${name}` / `${name:format}`; unknown names are an error."""

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]

    return _TEMPLATE.sub(value, expr)
