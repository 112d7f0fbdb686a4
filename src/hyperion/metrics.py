"""Prometheus text metrics, served on ``metrics.listen`` (e.g. 127.0.0.1:9108) by `hyperion run`.

Counters and histograms are process-wide (one registry per process); gauges are collected at
scrape time from the stores, so they are always true to the disk.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("hyperion.metrics")

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = {}
        self._hists: dict[str, dict[Labels, list[float]]] = {}
        self._help: dict[str, tuple[str, str]] = {}
        self._collectors: list[Callable[[], Iterable[tuple[str, str, Labels, float]]]] = []

    def describe(self, name: str, kind: str, text: str) -> None:
        self._help[name] = (kind, text)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters.setdefault(name, {})
            series[key] = series.get(key, 0.0) + value

    def take_counters(self) -> list[tuple[str, dict[str, str], float]]:
        """The counters' values, which are reset to nothing: what a child process hands to
        the process that serves the metrics (intake/process.py)."""
        with self._lock:
            taken = [(name, dict(key), value) for name, series in self._counters.items()
                     for key, value in series.items()]
            self._counters.clear()
        return taken

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            data = self._hists.setdefault(name, {}).setdefault(key, [0.0] * (len(BUCKETS) + 2))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    data[i] += 1
            data[-2] += 1            # count
            data[-1] += seconds      # sum

    def collector(self, fn: Callable[[], Iterable[tuple[str, str, Labels, float]]]) -> None:
        """fn yields (name, help, labels, value) gauges at scrape time."""
        self._collectors.append(fn)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            counters = {n: dict(s) for n, s in self._counters.items()}
            hists = {n: {k: list(v) for k, v in s.items()} for n, s in self._hists.items()}
        for name, series in sorted(counters.items()):
            kind, text = self._help.get(name, ("counter", name))
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            lines += [f"{name}{_labels(k)} {v:g}" for k, v in sorted(series.items())]
        for name, hseries in sorted(hists.items()):
            _, text = self._help.get(name, ("histogram", name))
            lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
            for key, data in sorted(hseries.items()):
                for i, bound in enumerate(BUCKETS):
                    lines.append(f"{name}_bucket{_labels((*key, ('le', f'{bound:g}')))} "
                                 f"{data[i]:g}")
                lines.append(f"{name}_bucket{_labels((*key, ('le', '+Inf')))} {data[-2]:g}")
                lines.append(f"{name}_count{_labels(key)} {data[-2]:g}")
                lines.append(f"{name}_sum{_labels(key)} {data[-1]:g}")
        gauges: dict[str, tuple[str, list[str]]] = {}
        for fn in self._collectors:
            try:
                for name, text, labels, value in fn():
                    gauges.setdefault(name, (text, []))[1].append(
                        f"{name}{_labels(labels)} {value:g}")
            except Exception:  # a broken collector must not break the endpoint
                log.exception("metrics collector failed")
        for name, (text, samples) in sorted(gauges.items()):
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", *samples]
        return "\n".join(lines) + "\n"


METRICS = Registry()
METRICS.describe("hyperion_requests_total", "counter",
                 "Requests that entered each state (transitions into it), by state.")
METRICS.describe("hyperion_stage_seconds", "histogram",
                 "Duration of pipeline stages (prepare, apply, check, land).")
METRICS.describe("hyperion_notification_failures_total", "counter",
                 "Notifications that could not be delivered.")
METRICS.describe("hyperion_lease_sweeps_total", "counter",
                 "Stale leases returned to the queue by the sweeper.")


class MetricsServer:
    def __init__(self, listen: str, registry: Registry = METRICS) -> None:
        host, _, port = listen.rpartition(":")
        registry_ref = registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = registry_ref.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics",
                                       daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
