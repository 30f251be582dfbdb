"""Prometheus text-format metrics without a client library: request counts and latency
histograms per route, in-flight requests, refusals, and model load time."""

from __future__ import annotations

import threading
from collections import defaultdict

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _labels(d: dict[str, str]) -> str:
    def esc(v: str) -> str:
        return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in d.items()) + "}" if d else ""


class Metrics:
    """Thread-safe counters, gauges and histograms, rendered by :meth:`render`.

    Example:
        >>> m = Metrics()
        >>> m.observe_request("GET", "/healthz", 200, 0.002)
        >>> 'facelab_requests_total{method="GET",route="/healthz",status="200"} 1' in m.render()
        True
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.latency: dict[tuple[str, str], list[int]] = {}
        self.latency_sum: dict[tuple[str, str], float] = defaultdict(float)
        self.latency_count: dict[tuple[str, str], int] = defaultdict(int)
        self.refused: dict[str, int] = defaultdict(int)
        self.gauges: dict[str, float] = {}
        self.in_flight = 0

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, str(status))] += 1
            key = (method, route)
            counts = self.latency.setdefault(key, [0] * len(BUCKETS))
            for i, b in enumerate(BUCKETS):
                if seconds <= b:
                    counts[i] += 1
            self.latency_sum[key] += seconds
            self.latency_count[key] += 1

    def refuse(self, reason: str) -> None:
        with self._lock:
            self.refused[reason] += 1

    def set_gauge(self, name: str, value: float) -> None:
        with self._lock:
            self.gauges[name] = float(value)

    def add_in_flight(self, n: int) -> None:
        with self._lock:
            self.in_flight += n

    def render(self) -> str:
        with self._lock:
            out = ["# HELP facelab_requests_total HTTP requests by method, route and status.",
                   "# TYPE facelab_requests_total counter"]
            for (m, r, s), n in sorted(self.requests.items()):
                out.append(f"facelab_requests_total{_labels({'method': m, 'route': r, 'status': s})} {n}")
            out += ["# HELP facelab_request_seconds Request latency (seconds).",
                    "# TYPE facelab_request_seconds histogram"]
            for (m, r), counts in sorted(self.latency.items()):
                base = {"method": m, "route": r}
                for b, c in zip(BUCKETS, counts):
                    out.append(f"facelab_request_seconds_bucket{_labels({**base, 'le': f'{b:g}'})} {c}")
                n = self.latency_count[(m, r)]
                out.append(f"facelab_request_seconds_bucket{_labels({**base, 'le': '+Inf'})} {n}")
                out.append(f"facelab_request_seconds_sum{_labels(base)} {self.latency_sum[(m, r)]:.6f}")
                out.append(f"facelab_request_seconds_count{_labels(base)} {n}")
            out += ["# HELP facelab_refused_total Requests refused before reaching a handler, by reason.",
                    "# TYPE facelab_refused_total counter"]
            for reason, n in sorted(self.refused.items()):
                out.append(f"facelab_refused_total{_labels({'reason': reason})} {n}")
            out += ["# HELP facelab_requests_in_flight Requests being handled now.",
                    "# TYPE facelab_requests_in_flight gauge", f"facelab_requests_in_flight {self.in_flight}"]
            for name, v in sorted(self.gauges.items()):
                out += [f"# TYPE {name} gauge", f"{name} {v:.6f}"]
            return "\n".join(out) + "\n"
