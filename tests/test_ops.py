"""The operator files in ops/: Prometheus rules and their tests, the dashboard, the runbook.

promtool (from Debian's `prometheus` package; `ops/install-promtool.sh`)
validates the configuration and runs the alert unit tests. Its absence is a
failure, not a skip, unless ORCHESTRATOR_SKIP_PROMTOOL=1 says so on purpose.
The other checks read the files with the standard library only: YAML is
read as text, which these hand-written files keep regular enough for.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "ops"
PROMETHEUS = OPS / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
DASHBOARD = OPS / "grafana" / "dashboard.json"
RUNBOOK = OPS / "RUNBOOK.md"
METRICS_PACKAGE = ROOT / "orchestrator" / "metrics"

EXPECTED_ALERTS = {
    "OrchestratorDown",
    "OrchestratorNotReady",
    "JobsTimingOut",
    "RefundRateHigh",
    "IntakeLagHigh",
    "AuditFailing",
    "AuditNotRunning",
    "WebhookSignatureFailures",
    "JobsStuck",
    "ProviderErrorsHigh",
    "UpstreamPredictionsRunningForNothing",
    "UpstreamSuccessesUndelivered",
    "PartitionSlotsUnowned",
    "LeasesLost",
    "ProviderBreakerOpen",
    "ObjectStorageFailing",
    "CallbacksGivenUp",
    "CallbacksBacklog",
}
ANNOTATIONS = ("summary", "description", "runbook_url")
METRIC_NAME = re.compile(r"\borchestrator_[a-z0-9_]+\b")
NAME_REGEX = re.compile(r'__name__\s*=~\s*\\?"([^"\\]+)\\?"')


def _metric_names(expr: str, exported: set[str]) -> set[str]:
    """The metric names a query reads: literal ones, and what each `__name__=~` matches.

    A name regex that matches nothing exported counts as its own (unexported) name.
    """
    names: set[str] = set()
    for pattern in NAME_REGEX.findall(expr):
        matched = {name for name in exported if re.fullmatch(pattern, name)}
        names |= matched or {pattern}
    return names | set(METRIC_NAME.findall(NAME_REGEX.sub("", expr)))


# ---------------------------------------------------------------- promtool


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is not None:
        return path
    if os.environ.get("ORCHESTRATOR_SKIP_PROMTOOL") == "1":
        pytest.skip("promtool is not installed and ORCHESTRATOR_SKIP_PROMTOOL=1")
    pytest.fail(
        "promtool is not on PATH, so the Prometheus config, alert rules and their unit "
        "tests were not checked. Install it (Debian, no root needed; as non-root it goes "
        "into .venv/bin, which `uv run` puts on PATH): sh ops/install-promtool.sh; "
        "or set ORCHESTRATOR_SKIP_PROMTOOL=1 to skip these checks deliberately.",
        pytrace=False,
    )


def _run_promtool(*args: str | Path) -> None:
    command = [_promtool(), *map(str, args)]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, (
        f"`{' '.join(command)}` exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )


def test_promtool_check_config() -> None:
    _run_promtool("check", "config", PROMETHEUS / "prometheus.yml")


def test_promtool_check_rules() -> None:
    _run_promtool("check", "rules", ALERTS)


def test_promtool_test_rules() -> None:
    _run_promtool("test", "rules", ALERTS_TEST)


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """Each dashboard query, as a recording rule, so promtool parses its PromQL."""
    promtool = _promtool()
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(_panel_exprs()):
        concrete = (
            expr.replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$__interval", "1m")
        )
        lines += [f"      - record: dashboard_query_{i}", f"        expr: {json.dumps(concrete)}"]
    rules = tmp_path / "dashboard_rules.yml"
    rules.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- alerts.yml, read as text


def _alert_blocks() -> dict[str, str]:
    """Each alert rule's text, by alert name."""
    text = ALERTS.read_text(encoding="utf-8")
    parts = re.split(r"^\s*- alert:\s*", text, flags=re.MULTILINE)[1:]
    blocks: dict[str, str] = {}
    for part in parts:
        name, _, body = part.partition("\n")
        name = name.strip()
        assert name not in blocks, f"alert {name} is defined twice"
        blocks[name] = body
    return blocks


def _field(block: str, key: str) -> str | None:
    match = re.search(rf"^\s+{key}:[ \t]*(.*)$", block, flags=re.MULTILINE)
    if match is None:
        return None
    return match.group(1).strip().strip("\"'")


def _expr(block: str) -> str:
    """The rule's `expr`, inline or as a `|` block scalar."""
    lines = block.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^(\s+)expr:[ \t]*(.*)$", line)
        if match is None:
            continue
        indent, value = len(match.group(1)), match.group(2).strip()
        if value not in {"|", ">", "|-", ">-"}:
            return value.strip("\"'")
        body = []
        for following in lines[i + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following.strip())
        return "\n".join(body).strip()
    msg = "no expr"
    raise AssertionError(msg)


def test_every_expected_alert_is_defined() -> None:
    assert set(_alert_blocks()) == EXPECTED_ALERTS


def test_every_alert_has_severity_and_annotations() -> None:
    for name, block in _alert_blocks().items():
        assert _field(block, "severity") in {"critical", "warning", "info"}, name
        for annotation in ANNOTATIONS:
            assert _field(block, annotation), f"{name} lacks the {annotation} annotation"
        assert _expr(block), name


def _headings_anchors() -> set[str]:
    """GitHub's anchors for the runbook's headings."""
    anchors = set()
    for line in RUNBOOK.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match is None:
            continue
        title = match.group(1).strip().lower()
        title = re.sub(r"[^\w\- ]", "", title)
        anchors.add(title.replace(" ", "-"))
    return anchors


def test_every_runbook_url_names_a_runbook_section() -> None:
    anchors = _headings_anchors()
    for name, block in _alert_blocks().items():
        url = _field(block, "runbook_url")
        assert url is not None
        match = re.fullmatch(r"(?:.*/)?ops/RUNBOOK\.md#([\w-]+)", url)
        assert match is not None, f"{name}: runbook_url {url!r} is not ops/RUNBOOK.md#section"
        assert match.group(1) in anchors, f"{name}: no heading in RUNBOOK.md for #{match.group(1)}"
        assert match.group(1) == name.lower(), f"{name}: runbook_url should be #{name.lower()}"


def test_runbook_internal_links_resolve() -> None:
    anchors = _headings_anchors()
    links = re.findall(r"\]\(#([\w-]+)\)", RUNBOOK.read_text(encoding="utf-8"))
    assert links
    assert set(links) <= anchors, set(links) - anchors


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    text = ALERTS_TEST.read_text(encoding="utf-8")
    cases = re.findall(r"alertname:\s*(\w+)\s*\n\s*exp_alerts:[ \t]*(\[\])?", text)
    fires = {name for name, empty in cases if not empty}
    quiet = {name for name, empty in cases if empty}
    assert fires >= EXPECTED_ALERTS, f"never seen firing: {EXPECTED_ALERTS - fires}"
    assert quiet >= EXPECTED_ALERTS, f"never seen quiet: {EXPECTED_ALERTS - quiet}"


def test_ratio_alerts_guard_their_denominator() -> None:
    for name in ("JobsTimingOut", "RefundRateHigh", "ProviderErrorsHigh", "ObjectStorageFailing"):
        expr = _expr(_alert_blocks()[name])
        assert "/" in expr, name
        assert re.search(r"\band\b[\s\S]*>\s*0\s*$", expr), f"{name}: no `and <denominator> > 0`"


# ---------------------------------------------------------------- metric names


def _exported_metrics() -> set[str]:
    """Every sample name `orchestrator.metrics` exports, with the client's suffixes."""
    source = "\n".join(
        path.read_text(encoding="utf-8") for path in sorted(METRICS_PACKAGE.glob("*.py"))
    )
    suffixes = {
        "Counter": ("_total", "_created"),
        "Gauge": ("",),
        "Histogram": ("_bucket", "_sum", "_count", "_created"),
    }
    names = set()
    for kind, name in re.findall(
        r"\b(Counter|Gauge|Histogram)\(\s*\"([a-z_:][a-z0-9_:]*)\"", source
    ):
        base = name.removesuffix("_total") if kind == "Counter" else name
        names |= {base + suffix for suffix in suffixes[kind]}
    return names


def _dashboard() -> dict[str, object]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _walk(node: object) -> Iterator[dict[str, object]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _panel_exprs() -> list[str]:
    """The panels' PromQL queries."""
    return [str(node["expr"]) for node in _walk(_dashboard()) if "expr" in node]


def _dashboard_exprs() -> list[str]:
    """The panels' queries and the template variables' (Grafana's `label_values(...)`)."""
    return _panel_exprs() + [
        str(node["definition"]) for node in _walk(_dashboard()) if "definition" in node
    ]


def test_metrics_source_parses() -> None:
    exported = _exported_metrics()
    assert "orchestrator_jobs_finished_total" in exported
    assert "orchestrator_intake_lag_seconds_bucket" in exported
    assert "orchestrator_audit_violations" in exported
    assert "orchestrator_jobs_finished" not in exported


def test_alerts_use_only_exported_metrics() -> None:
    exported = _exported_metrics()
    used = set()
    for block in _alert_blocks().values():
        used |= _metric_names(_expr(block), exported)
    assert len(used) >= 10
    assert used <= exported, f"not exported by orchestrator.metrics: {used - exported}"


def test_alert_unit_tests_use_only_exported_metrics() -> None:
    exported = _exported_metrics()
    series = re.findall(r"series:\s*'([a-z_:][a-z0-9_:]*)\{", ALERTS_TEST.read_text("utf-8"))
    used = {name for name in series if name.startswith("orchestrator_")}
    assert used
    assert used <= exported, f"not exported by orchestrator.metrics: {used - exported}"


def test_dashboard_parses_and_uses_only_exported_metrics() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"]
    assert dashboard["title"]
    exprs = _dashboard_exprs()
    assert exprs
    exported = _exported_metrics()
    used = {name for expr in exprs for name in _metric_names(expr, exported)}
    assert len(used) >= 20
    assert used <= exported, f"not exported by orchestrator.metrics: {used - exported}"


def test_dashboard_panels_have_unique_ids_and_queries() -> None:
    panels = [node for node in _walk(_dashboard()["panels"]) if "gridPos" in node]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] != "row":
            assert panel.get("targets"), panel["title"]


def test_a_name_regex_counts_what_it_matches_and_flags_what_matches_nothing() -> None:
    exported = {"orchestrator_jobs_finished_total", "orchestrator_jobs_rejected_total"}
    expr = 'sum(increase({__name__=~"orchestrator_jobs_(finished|rejected)_total"}[1h]))'
    assert _metric_names(expr, exported) == exported
    assert _metric_names('{__name__=~"orchestrator_gone_total"}', exported) == {
        "orchestrator_gone_total"
    }
