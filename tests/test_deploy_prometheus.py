"""deploy/prometheus and deploy/grafana: alert rules, their unit tests, scrape config, dashboard.

With promtool (CI installs Debian's ``prometheus`` package) the rules are checked and
their unit tests run, the example configuration is checked, and every dashboard query
is parsed as PromQL.  Without it, the files are still held against the metrics the
gateway really exports: :class:`GatewayMetrics` is fed one of everything and its
exposition lists the metric names and labels the rules and panels may use.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.monitor.metrics import GatewayMetrics
from gateway.monitor.pinger import TickReport, Verdict
from gateway.monitor.status import CertificateInfo, CpaInfo, QueueInfo, Snapshot
from gateway.store.pings import LinkKey, LinkStatus

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "dkgw-alerts.yml"
RULE_TESTS = PROMETHEUS / "dkgw-alerts.test.yml"
SCRAPE_CONFIG = PROMETHEUS / "prometheus.example.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dkgw-dashboard.json"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool CLI not installed: independent alert-rule oracle absent "
    "(Debian package 'prometheus'; .ci/run installs it)",
)

#: The alerts the on-call runbook refers to; renaming one breaks silences and routes.
REQUIRED_ALERTS = {
    "EbmsLinkDown",
    "EbmsLinkSlow",
    "EbmsLinkFlapping",
    "EbmsPingStale",
    "EbmsCertificateExpiringSoon",
    "EbmsCertificateExpiring",
    "EbmsCpaEndingSoon",
    "EbmsDeliveryQueueStale",
    "EbmsEventsNotCollected",
    "EbmsGatewayDown",
}
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}
#: Series Prometheus itself records per target; only the rules may use them.
SCRAPE_SERIES = {"up": set[str]()}

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_PROMQL_WORDS |= {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_PROMQL_FUNCTIONS = {
    "abs", "absent", "avg", "avg_over_time", "ceil", "changes", "clamp_min", "count",
    "count_over_time", "delta", "deriv", "floor", "histogram_quantile", "increase", "irate",
    "label_replace", "max", "max_over_time", "min", "min_over_time", "quantile", "rate",
    "resets", "round", "scalar", "sort", "sort_desc", "sum", "time", "timestamp", "topk",
    "bottomk", "vector",
}  # fmt: skip


# -- what the gateway exports ---------------------------------------------------------------


@cache
def exported() -> dict[str, frozenset[str]]:
    """Sample name -> label names, from a real exposition with every metric populated."""
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    key = LinkKey("cpa-test", "urn:osb:oin:00000001001234567000", "urn:osb:oin:0000000100321")
    link = LinkStatus(
        key=key,
        active=True,
        next_due=now + timedelta(minutes=5),
        ping_message_id=None,
        last_checked_at=now,
        last_outcome="up",
        last_rtt=0.02,
        last_reason=None,
        last_success_at=now,
        consecutive_failures=0,
    )
    cert = CertificateInfo("Gemeente", "tls", "CN=gw.example.nl", None, now + timedelta(days=90))
    cpa = CpaInfo("cpa-test", "agreed", now - timedelta(days=1), now + timedelta(days=365), (cert,))
    queue = QueueInfo(
        1, 1, now - timedelta(minutes=1), 1, now - timedelta(minutes=2), (("bo", "failed", 1),)
    )
    snap = Snapshot(now, (cpa,), (link,), queue)
    metrics = GatewayMetrics(lambda: snap)
    metrics.on_pings(TickReport(verdicts=[Verdict(key, "up", 0.02, None, "ping-1", "up")]))
    metrics.on_event({"event": "inbound", "status": "200", "outcome": "accepted"})
    metrics.on_event({"event": "delivery", "outcome": "done"})
    metrics.on_tls_failure("ebms", "untrusted-certificate")
    metrics.on_event({"event": "slow-client", "listener": "ebms", "missing": "headers"})
    metrics.on_event({"event": "connections-full", "listener": "ebms"})
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in names.items()}


def test_the_exposition_has_every_metric_the_files_are_written_against() -> None:
    names = exported()
    for name in (
        "ebms_ping_up",
        "ebms_ping_rtt_seconds_bucket",
        "ebms_ping_last_success_timestamp",
        "ebms_ping_last_check_timestamp",
        "ebms_ping_consecutive_failures",
        "ebms_pings_total",
        "ebms_cpa_end_timestamp_seconds",
        "ebms_cpa_active",
        "ebms_certificate_not_after_timestamp_seconds",
        "ebms_delivery_tasks",
        "ebms_delivery_oldest_pending_age_seconds",
        "ebms_events_unprocessed",
        "ebms_events_oldest_unprocessed_age_seconds",
        "ebms_inbound_requests_total",
        "ebms_delivery_attempts_total",
        "dkgw_webhook_deliveries",
        "process_resident_memory_bytes",
    ):
        assert name in names, name
    assert names["dkgw_webhook_deliveries"] == {"webhook", "state"}
    assert names["ebms_ping_rtt_seconds_bucket"] == {"cpa", "from", "to", "le"}
    assert names["ebms_certificate_not_after_timestamp_seconds"] == {
        "cpa",
        "party",
        "cert_id",
        "subject",
    }


# -- a small PromQL reader -------------------------------------------------------------------


def references(expr: str) -> tuple[dict[str, set[str]], set[str], set[str]]:
    """Metric names with the labels matched on them, labels grouped on, functions called.

    Enough PromQL for the expressions in these files: Grafana variables, strings and
    range brackets are dropped before the identifiers are read.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    metrics: dict[str, set[str]] = {}

    def selector(match: re.Match[str]) -> str:
        labels = set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", match.group(2)))
        metrics.setdefault(match.group(1), set()).update(labels)
        return f" {match.group(1)} "

    text = re.sub(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", selector, text)
    assert "{" not in text, f"a selector without a metric name in {expr!r}"
    grouped: set[str] = set()
    clause = r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
    for _, labels in re.findall(clause, text):
        grouped.update(label.strip() for label in labels.split(",") if label.strip())
    text = re.sub(clause, " ", text)
    functions: set[str] = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call:
            functions.add(word)
        elif word.lower() not in _PROMQL_WORDS:
            metrics.setdefault(word, set())
    return metrics, grouped, functions


def assert_known(expr: str, where: str, extra: dict[str, set[str]] | None = None) -> None:
    """Every metric, label and function in ``expr`` exists."""
    known = {**exported(), **(extra or {})}
    metrics, grouped, functions = references(expr)
    assert metrics, f"{where}: no metric in {expr!r}"
    unknown = sorted(set(metrics) - set(known))
    assert not unknown, f"{where}: {unknown} are not exported by the gateway ({expr!r})"
    for name, labels in metrics.items():
        stray = labels - known[name] - TARGET_LABELS
        assert not stray, f"{where}: {name} has no label {sorted(stray)}"
    available = set().union(*(known[name] for name in metrics)) | TARGET_LABELS
    assert grouped <= available, f"{where}: grouping on {sorted(grouped - available)}"
    assert functions <= _PROMQL_FUNCTIONS, f"{where}: {sorted(functions - _PROMQL_FUNCTIONS)}"


def test_the_reader_finds_metrics_labels_and_functions() -> None:
    metrics, grouped, functions = references(
        'histogram_quantile(0.95, sum by (cpa, le) (rate(ebms_ping_rtt_seconds_bucket{cpa=~"$cpa"}'
        "[$__rate_interval]))) > 5e0 and on (cpa) ebms_cpa_active == 1 or vector(0)"
    )
    assert metrics == {"ebms_ping_rtt_seconds_bucket": {"cpa"}, "ebms_cpa_active": set()}
    assert grouped == {"cpa", "le"}
    assert functions == {"histogram_quantile", "sum", "rate", "vector"}
    with pytest.raises(AssertionError, match="not exported"):
        assert_known("max by (cpa) (ebms_ping_upp)", "typo")
    with pytest.raises(AssertionError, match="no label"):
        assert_known('ebms_ping_up{party="x"}', "label")
    with pytest.raises(AssertionError, match="grouping"):
        assert_known("max by (state) (ebms_ping_up)", "grouping")


# -- the alert rules, read without a YAML library ---------------------------------------------


def rule_exprs(text: str) -> Iterator[tuple[str, str]]:
    """(name, expr) of every rule: ``expr:`` on one line or as an indented block scalar."""
    lines = text.splitlines()
    name = "?"
    for i, line in enumerate(lines):
        head = re.match(r"\s*- (?:alert|record): (\S+)", line)
        if head:
            name = head.group(1)
        match = re.match(r"(\s*)expr: ?(.*)$", line)
        if not match:
            continue
        indent, value = len(match.group(1)), match.group(2).strip()
        if value and value[0] not in "|>":
            yield name, value.strip("'\"")
            continue
        block = []
        for following in lines[i + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            block.append(following.strip())
        yield name, " ".join(part for part in block if part)


def alert_blocks(text: str) -> dict[str, str]:
    """Alert name -> the text of its rule."""
    parts = re.split(r"^\s*- alert: ", text, flags=re.MULTILINE)[1:]
    return {part.split("\n", 1)[0].strip(): part for part in parts}


def test_every_required_alert_has_a_severity_summary_and_description() -> None:
    blocks = alert_blocks(RULES.read_text(encoding="utf-8"))
    assert set(blocks) >= REQUIRED_ALERTS, sorted(REQUIRED_ALERTS - set(blocks))
    for name, block in blocks.items():
        assert re.search(r"^\s+severity: (critical|warning)$", block, re.MULTILINE), name
        assert re.search(r"^\s+summary: \S", block, re.MULTILINE), name
        assert re.search(r"^\s+description: \S", block, re.MULTILINE), name
    assert "severity: critical" in blocks["EbmsLinkDown"]
    assert "for: 15m" in blocks["EbmsLinkDown"]
    summary = blocks["EbmsLinkDown"].split("summary:")[1].split("\n")[0]
    assert set(re.findall(r"\$labels\.(\w+)", summary)) == {"cpa", "from", "to"}
    assert 'up{job="dkgw"} == 0' in blocks["EbmsGatewayDown"]


def test_rules_use_only_exported_metrics_and_aggregate_over_nodes() -> None:
    exprs = list(rule_exprs(RULES.read_text(encoding="utf-8")))
    assert {name for name, _ in exprs} == set(alert_blocks(RULES.read_text(encoding="utf-8")))
    for name, expr in exprs:
        assert_known(expr, name, SCRAPE_SERIES)
        metrics, _, functions = references(expr)
        if any(metric.startswith("ebms_") for metric in metrics):
            # Several nodes report the same store: aggregate, or each node raises its own alert.
            assert functions & {"max", "min", "sum"}, f"{name} does not aggregate: {expr!r}"


def test_the_rule_tests_feed_exported_series_and_cover_every_alert() -> None:
    text = RULE_TESTS.read_text(encoding="utf-8")
    alerts = set(alert_blocks(RULES.read_text(encoding="utf-8")))
    series = re.findall(r"^\s*- series: '([^']*)'", text, re.MULTILINE)
    assert series
    for selector in series:
        assert_known(selector, "dkgw-alerts.test.yml", SCRAPE_SERIES)
    tested = set(re.findall(r"^\s*alertname: (\S+)", text, re.MULTILINE))
    assert tested <= alerts, sorted(tested - alerts)
    fired = set()
    for case in re.split(r"^\s*- eval_time: ", text, flags=re.MULTILINE)[1:]:
        if "exp_labels:" in case:
            fired.update(re.findall(r"alertname: (\S+)", case))
    assert fired == alerts, f"never shown firing: {sorted(alerts - fired)}"


def test_the_example_config_scrapes_job_dkgw_and_loads_the_rules() -> None:
    text = SCRAPE_CONFIG.read_text(encoding="utf-8")
    assert re.search(r"^\s*- job_name: dkgw$", text, re.MULTILINE)
    assert '"127.0.0.1:8080"' in text
    assert re.search(r"^rule_files:\n\s+- dkgw-alerts.yml$", text, re.MULTILINE)


# -- the dashboard ---------------------------------------------------------------------------


@cache
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def variable_selectors() -> Iterator[tuple[str, str]]:
    """The series selector inside each query variable's ``label_values(selector, label)``."""
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, f"variable {var['name']}: {query!r}"
        yield f"variable {var['name']}", match.group(1)


def panel_exprs() -> Iterator[tuple[str, str]]:
    for panel in panels():
        for target in panel.get("targets", []):
            yield f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]


def test_the_dashboard_loads_with_its_datasource_and_variables() -> None:
    board = dashboard()
    assert board["schemaVersion"] == 39
    assert board["uid"] and board["title"]
    variables = {var["name"]: var for var in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("cpa", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${DS_PROMETHEUS}"
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), "panel ids are not unique"
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
    titles = " ".join(panel["title"].lower() for panel in panels())
    for words in ("link status", "round trip", "certificate", "cpa end", "queue", "inbound"):
        assert words in titles, words


def test_dashboard_queries_use_only_exported_metrics() -> None:
    exprs = list(panel_exprs()) + list(variable_selectors())
    assert len(exprs) > 15
    used = set()
    for where, expr in exprs:
        assert_known(expr, where)
        used.update(references(expr)[0])
    # Every ebMS metric the gateway exports has a panel (histograms: their buckets).
    families = {name for name in exported() if name.startswith("ebms_")}
    families -= {name for name in families if re.search(r"_(created|count|sum)$", name)}
    assert families <= used, f"no panel for {sorted(families - used)}"


def test_the_certificate_table_shows_the_soonest_expiry_first() -> None:
    (table,) = [p for p in panels() if p["title"] == "Days until certificate expiry"]
    assert table["type"] == "table"
    (target,) = table["targets"]
    assert "ebms_certificate_not_after_timestamp_seconds" in target["expr"]
    assert target["instant"] is True and target["format"] == "table"
    assert table["options"]["sortBy"] == [{"displayName": "Days left", "desc": False}]
    rename = table["transformations"][-1]["options"]["renameByName"]
    assert rename["Value"] == "Days left"


# -- promtool ----------------------------------------------------------------------------------


def promtool(*args: str, cwd: Path = REPO) -> str:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    out = promtool("check", "rules", str(RULES.relative_to(REPO)))
    assert f"SUCCESS: {len(alert_blocks(RULES.read_text(encoding='utf-8')))} rules found" in out


@needs_promtool
def test_promtool_runs_the_rule_unit_tests() -> None:
    out = promtool("test", "rules", str(RULE_TESTS.relative_to(REPO)))
    assert "SUCCESS" in out


@needs_promtool
def test_promtool_checks_the_example_config_with_its_rules() -> None:
    out = promtool("check", "config", str(SCRAPE_CONFIG.relative_to(REPO)))
    assert "SUCCESS: 1 rule files found" in out


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each query, with its Grafana variables filled in, as a recording rule."""
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for where, expr in [*panel_exprs(), *variable_selectors()]:
        expr = expr.replace("$__rate_interval", "5m").replace("$cpa", ".*")
        expr = expr.replace("$instance", ".*")
        assert "$" not in expr, f"{where}: a Grafana variable this test does not fill in"
        record = "dashboard:" + re.sub(r"\W+", "_", where).strip("_")
        rules += [f"      - record: {record}", f"        expr: {json.dumps(expr)}"]
    (tmp_path / "dashboard.yml").write_text("\n".join(rules) + "\n", encoding="utf-8")
    promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
