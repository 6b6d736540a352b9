"""`watch --metrics HOST:PORT`: the Prometheus exposition of a live run.

A recorded capture replayed through LiveMonitor checks every number against what the run itself reported; a root
test runs the real `egressguard watch` on the lab bridge with a real Prometheus server scraping it every second and
reads the values back through Prometheus' HTTP API."""
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter

import pytest

from conftest import LAB_CAPTURES, REPO, lab_capture, missing_tools

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from egressguard.capture.replay import ReplaySource  # noqa: E402
from egressguard.live import LiveMonitor, WatchSettings  # noqa: E402
from egressguard.live.metrics import MetricsExporter, _Monotonic, parse_listen_address  # noqa: E402
from egressguard.pipeline import Settings, default_context  # noqa: E402
from egressguard.policy.rules import load_rules  # noqa: E402

REQUIRED = ("egressguard_packets_total", "egressguard_kernel_drops_total", "egressguard_flows_active",
            "egressguard_flow_evictions_total", "egressguard_findings_total", "egressguard_hook_failures_total")


def scrape(exporter: MetricsExporter) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} read over HTTP from the exporter, parsed by prometheus_client's own
    parser of the text format."""
    host, port = exporter.address
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def replay(name: str):
    source = ReplaySource(lab_capture(name), "br0", chunk_frames=4)
    emitted = []
    monitor = LiveMonitor(source, default_context(load_rules(LAB_CAPTURES / "rules.toml")), emitted.append,
                          WatchSettings(pipeline=Settings(), judge_every_s=1.0, window_every_s=2.0),
                          clock=source.clock)
    exporter = MetricsExporter(monitor)
    exporter.start("127.0.0.1", 0)
    return source, monitor, exporter, emitted


@pytest.mark.parametrize("name", ["ssh-reverse-shell.pcap", "stratum-v1-proxy.pcap"])
def test_exposition_of_a_replayed_run_matches_the_run(name):
    source, monitor, exporter, emitted = replay(name)
    try:
        before = scrape(exporter)  # the exporter serves from the start, before any packet
        assert before[("egressguard_packets_total", (("interface", "br0"),))] == 0
        summary = monitor.run(threading.Event())
        after = scrape(exporter)
    finally:
        exporter.close()
    names = {n for n, _ in after}
    assert all(n in names for n in REQUIRED if n != "egressguard_findings_total")
    br0 = (("interface", "br0"),)
    assert after[("egressguard_packets_total", br0)] == summary.packets > 0
    assert after[("egressguard_bytes_total", br0)] == summary.wire_bytes
    assert after[("egressguard_kernel_drops_total", br0)] == 0
    assert after[("egressguard_flow_evictions_total", ())] == summary.evictions
    assert after[("egressguard_rounds_total", ())] >= 1
    assert after[("egressguard_decode_problems_total", (("problem", "not_ip"),))] == summary.not_ip
    # findings: exactly the records the run emitted, by kind and severity
    exposed = {dict(labels)["kind"] + "/" + dict(labels)["severity"]: value
               for (n, labels), value in after.items() if n == "egressguard_findings_total"}
    assert emitted and exposed == dict(Counter(f"{r['kind']}/{r['severity']}" for r in emitted))
    assert after[("egressguard_hook_failures_total", ())] == 0


def test_counters_never_go_down_when_their_source_restarts():
    total = _Monotonic()
    assert [total(("x",), v) for v in (5, 7, 7, 2, 4)] == [5, 7, 7, 9, 11]  # 2: restarted from zero
    assert total(("y",), 3) == 3  # each series on its own


def test_scraping_changes_nothing_and_hook_outcomes_are_counted(tmp_path):
    from egressguard.report.hooks import FindingHook
    from egressguard.schema import Severity

    source, monitor, exporter, emitted = replay("ssh-reverse-shell.pcap")
    outcomes = []
    hook = FindingHook([str(tmp_path / "missing-program")], Severity.LOW, outcomes.append)
    exporter.hook = hook
    monitor.emit = lambda record: (emitted.append(record), hook.offer(record))
    try:
        monitor.run(threading.Event())
        hook.close()
        first, second = scrape(exporter), scrape(exporter)
    finally:
        exporter.close()
    ours = lambda scraped: {k: v for k, v in scraped.items() if k[0].startswith("egressguard_")}  # noqa: E731
    assert ours(first) == ours(second)  # reading is not counting: a second scrape of a stopped run changes nothing
    assert second[("egressguard_hook_runs_total", ())] == len(outcomes) == len(emitted) > 0
    assert second[("egressguard_hook_failures_total", ())] == sum(not o.ok for o in outcomes) == len(emitted)


@pytest.mark.parametrize("text,expected", [("127.0.0.1:9479", ("127.0.0.1", 9479)), (":9479", ("0.0.0.0", 9479)),
                                           ("[::1]:9479", ("::1", 9479)), ("localhost:1", ("localhost", 1))])
def test_listen_addresses_are_read(text, expected):
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize("text", ["9479", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "::1:9479", "a b:1",
                                  "127.0.0.1:http"])
def test_bad_listen_addresses_are_refused_with_a_reason(text):
    with pytest.raises(ValueError):
        parse_listen_address(text)


def test_a_malformed_metrics_option_is_a_usage_error_before_anything_opens():
    proc = subprocess.run([sys.executable, "-m", "egressguard", "watch", "-i", "lo", "--metrics", "9479"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "--metrics" in proc.stderr and "HOST:PORT" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------- root tests
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="watch needs raw sockets and the test creates namespaces")

PY_LISTEN_ERRORS = """
import json, socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
taken = socket.socket()
taken.bind(("127.0.0.1", 0))
taken.listen()
port = taken.getsockname()[1]
out = []
for address in (f"127.0.0.1:{port}", "no-such-host.invalid:9479"):
    proc = subprocess.run([sys.executable, "-m", "egressguard", "watch", "-i", "lo", "--no-dashboard", "--metrics",
                           address], capture_output=True, text=True, timeout=300)
    out.append((proc.returncode, proc.stderr))
print(json.dumps(out))
"""


@pytest.mark.root
@root_only
@pytest.mark.skipif(shutil.which("unshare") is None, reason="missing tool: unshare (util-linux)")
def test_a_port_in_use_or_an_unknown_host_is_one_clear_error():
    """In a network namespace of its own: a port another socket holds, then a name that does not resolve."""
    proc = subprocess.run(["unshare", "--net", sys.executable, "-c", PY_LISTEN_ERRORS], capture_output=True,
                          text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (in_use, in_use_err), (unknown, unknown_err) = json.loads(proc.stdout)
    assert in_use == 2 and "cannot listen: Address already in use" in in_use_err, in_use_err
    assert unknown == 2 and "no such address" in unknown_err, unknown_err
    for err in (in_use_err, unknown_err):
        assert "Traceback" not in err and err.count("egressguard: error:") == 1


PROMETHEUS_CONFIG = """global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: egressguard
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""
PY_QUERY = """
import json, sys, urllib.parse, urllib.request
url = sys.argv[1] + "/api/v1/query?" + urllib.parse.urlencode({"query": sys.argv[2]})
try:
    print(urllib.request.urlopen(url, timeout=5).read().decode())
except OSError as exc:
    print(json.dumps({"status": "down", "error": str(exc)}))
"""
METRICS_PORT, PROMETHEUS_PORT = 9479, 9090  # inside the lab's gateway namespace: free, it is new
DIRECT_IP = "198.18.0.12"  # captures/lab_egress.py: reached by address, allowed by no rule of captures/rules.toml


def _prometheus_binary() -> str | None:
    return shutil.which("prometheus") or next((p for p in ("/usr/bin/prometheus", "/usr/sbin/prometheus")
                                               if os.access(p, os.X_OK)), None)


@pytest.mark.root
@root_only
@pytest.mark.skipif(_prometheus_binary() is None, reason="missing: prometheus (apt-get install prometheus)")
@pytest.mark.skipif(bool(missing_tools("ip", "tcpdump", "ping", "ss")),
                    reason=f"missing tools: {', '.join(missing_tools('ip', 'tcpdump', 'ping', 'ss'))}")
def test_a_real_prometheus_scrapes_watch_on_the_lab_bridge(tmp_path):
    sys.path.insert(0, str(LAB_CAPTURES))
    import lab

    config = tmp_path / "prometheus.yml"
    config.write_text(PROMETHEUS_CONFIG.format(port=METRICS_PORT))
    api = f"http://127.0.0.1:{PROMETHEUS_PORT}"
    with lab.topology() as L:
        def query(expr: str) -> list:
            out = json.loads(L.run(L.gw, sys.executable, "-c", PY_QUERY, api, expr).stdout)
            return out["data"]["result"] if out.get("status") == "success" else []

        def wait_value(expr: str, pred, timeout: float) -> float | None:
            deadline = time.time() + timeout
            while time.time() < deadline:
                result = query(expr)
                if result and pred(float(result[0]["value"][1])):
                    return float(result[0]["value"][1])
                time.sleep(0.5)
            return None

        watch = L.popen(L.gw, sys.executable, "-m", "egressguard", "watch", "-i", "br0", "--no-dashboard",
                        "--rules", str(LAB_CAPTURES / "rules.toml"), "--metrics", f"127.0.0.1:{METRICS_PORT}",
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        prometheus = L.popen(L.gw, _prometheus_binary(), f"--config.file={config}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        stderr: list[str] = []
        ready = threading.Event()

        def read_stderr() -> None:
            for line in watch.stderr:
                stderr.append(line.rstrip("\n"))
                if "watching" in line:
                    ready.set()
        threading.Thread(target=read_stderr, daemon=True).start()
        findings: list[dict] = []
        threading.Thread(target=lambda: findings.extend(json.loads(line) for line in watch.stdout),
                         daemon=True).start()
        try:
            assert ready.wait(300), "\n".join(stderr)  # numba compiles the kernels on a cold cache
            # Prometheus sees the target up (a scrape of the exporter succeeded)
            assert wait_value('up{job="egressguard"}', lambda v: v == 1, 20) == 1, prometheus.stderr
            L.run(L.sbx, "ping", "-c", "3", "-i", "0.2", lab.OUTSIDE_IP)  # allowed: the lab's outside host
            L.run(L.out, "ip", "addr", "add", f"{DIRECT_IP}/24", "dev", "eth0")
            with lab.background(L, L.out, sys.executable, "-m", "http.server", "8443", "--bind", DIRECT_IP,
                                "--directory", str(lab._web_root(L)), ready_port=8443):
                L.run(L.sbx, sys.executable, "-c", lab.PY_HTTP_FETCH, DIRECT_IP, "8443", "2")
            packets = wait_value('egressguard_packets_total{interface="br0"}', lambda v: v >= 10, 15)
            assert packets is not None and packets >= 10  # 3 echo pairs and two HTTP downloads, at least
            kind = 'egressguard_findings_total{kind="unexpected_destination"}'
            deadline = time.time() + 25
            while time.time() < deadline and not any(f["kind"] == "unexpected_destination" for f in findings):
                time.sleep(0.3)
            reported = sum(f["kind"] == "unexpected_destination" for f in findings)
            assert reported >= 1, ("\n".join(stderr), findings)
            # Prometheus holds exactly what watch printed, once its next scrape has seen it
            assert wait_value(f"sum({kind})", lambda v: v == reported, 10) == reported
            assert wait_value('egressguard_kernel_drops_total{interface="br0"}', lambda v: v == 0, 5) == 0
            assert wait_value("egressguard_flows_active", lambda v: v >= 0, 5) is not None
            assert wait_value("egressguard_hook_failures_total", lambda v: v == 0, 5) == 0
            # a counter over time: Prometheus' own rate() over the scraped series sees the packets arrive
            assert wait_value('increase(egressguard_packets_total{interface="br0"}[1m])', lambda v: v > 0, 5)
        finally:
            for proc in (watch, prometheus):
                lab.stop_process(proc, grace=20)
        final = next((line for line in stderr if "stopped:" in line), "")
        assert watch.returncode == 0, "\n".join(stderr)
        assert int(final.split("stopped: ")[1].split(" packets")[0]) >= packets
