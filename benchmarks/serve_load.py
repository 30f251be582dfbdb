"""Load test of `facelab serve` on loopback: POST /v1/analyze at 1, 4 and 16 concurrent clients.

    FACELAB_DATA=../shared/data python benchmarks/serve_load.py [--run runs/main] [--duration 20]

What it does:

1. Makes a small face database in a temporary folder (MTCNN detector, dlib ResNet embedder)
   with a few UTKFace photos enrolled as identities, and a read-only API key for it.
2. For each attribute backend (``torch`` and ``onnx-int8`` by default; the int8 model is made
   first with ``facelab export RUN --format onnx --int8`` when RUN/model.int8.onnx is missing)
   starts the real server, ``python -m facelab serve --db ... --run RUN --backend B --rate 0``,
   in a subprocess on a free loopback port and waits for /readyz.
3. Drives ``POST /v1/analyze`` with a fixed set of real photos (``--images`` UTKFace photos,
   every n-th of the sorted folder, none of them enrolled) from N client threads for
   ``--duration`` seconds at each N in ``--clients``. Each client is a thread with its own
   keep-alive ``httpx.Client`` that sends the next photo as soon as the previous answer is
   in (closed loop, no think time), so N is also the number of requests in flight.
4. Prints, per backend and N: requests completed, requests/s, p50/p95/p99 latency (ms),
   errors (any status other than 200, or a transport error), faces found per request, and
   the server's resident memory (VmRSS of the server process, MB) just before and just after
   that run; the same server process serves the three runs of a backend in a row, so the
   memory column shows whether it grows under load.

Why threads + httpx rather than locust: the client is a few lines with no extra dependency
(httpx is already one of facelab's), and its per-request cost is small next to an analysis
(~tens of ms). Client and server share this machine's CPU cores: the figures are what one
box does serving itself over loopback, a lower bound for a server with its own cores.

Skips (exit 0, reason printed) when the run or the UTKFace photos are absent.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import httpx
import numpy as np

from facelab.paths import data_root


def rss_mb(pid: int) -> float:
    """Resident memory of a process (MB), from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_photos(folder: Path, n: int, skip: int = 0) -> list[Path]:
    """n photos spread over the sorted folder (deterministic), starting at offset `skip`."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    step = max(1, len(files) // (n + 1))
    return [files[(skip + i * step) % len(files)] for i in range(n)]


def make_database(root: Path, photos: list[Path]) -> tuple[str, str]:
    """A face database with one identity per photo, and a read key; returns (db path, key)."""
    from facelab.facedb.db import FaceDB, FaceDBConfig
    from facelab.serve.config import keys_path_for
    from facelab.serve.keys import KeyStore

    db_path = root / "faces.db"
    db = FaceDB.init(db_path, FaceDBConfig(detector="mtcnn", embedder="dlib-resnet"))
    try:
        for i, p in enumerate(photos):
            db.enroll(f"person-{i:02d}", [p])
    finally:
        db.close()
    ks = KeyStore(keys_path_for(str(db_path), None))
    _, secret = ks.add("load-test", "read")
    ks.close()
    return str(db_path), secret


@contextlib.contextmanager
def server(db: str, run: Path, backend: str, workers: int, log: Path):
    port = free_port()
    cmd = [sys.executable, "-m", "facelab", "serve", "--db", db, "--run", str(run), "--backend", backend,
           "--port", str(port), "--rate", "0", "--workers", str(workers)]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}); see {log}")
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(base + "/readyz", timeout=5)
                if r.status_code == 200:
                    break
                if r.json().get("status") == "failed":
                    raise RuntimeError(f"server failed to load: {r.text}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after 300 s; see {log}")
            time.sleep(0.5)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def drive(base: str, key: str, photos: list[tuple[str, bytes]], clients: int, duration: float) -> dict:
    """`clients` threads POST /v1/analyze back to back for `duration` seconds."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]
    faces: list[list[int]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=120) as c:
            j = i
            start.wait()
            while time.perf_counter() < stop_at[0]:
                name, data = photos[j % len(photos)]
                j += 1
                t0 = time.perf_counter()
                try:
                    r = c.post("/v1/analyze", files={"image": (name, data, "image/jpeg")})
                except httpx.HTTPError as exc:
                    errors[i].append(type(exc).__name__)
                    continue
                dt_s = time.perf_counter() - t0
                if r.status_code == 200:
                    lat[i].append(dt_s)
                    faces[i].append(len(r.json()["faces"]))
                else:
                    errors[i].append(f"{r.status_code}: {r.text[:120]}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    t_begin = time.perf_counter()
    stop_at[0] = t_begin + duration
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_begin
    all_lat = np.array([x for xs in lat for x in xs]) * 1000
    all_err = [e for es in errors for e in es]
    n_faces = [f for fs in faces for f in fs]
    p50, p95, p99 = (np.percentile(all_lat, [50, 95, 99]) if len(all_lat) else (float("nan"),) * 3)
    return {"clients": clients, "requests": len(all_lat), "wall_s": round(wall, 2),
            "rps": len(all_lat) / wall, "p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
            "errors": len(all_err), "error_examples": sorted(set(all_err))[:3],
            "faces_per_request": float(np.mean(n_faces)) if n_faces else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "main", help="attribute run folder")
    ap.add_argument("--data", type=Path, default=None, help="data folder (default: $FACELAB_DATA, "
                    "else ../shared/data)")
    ap.add_argument("--images", type=int, default=20, help="UTKFace photos sent (cycled)")
    ap.add_argument("--enroll", type=int, default=4, help="identities in the face database")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per concurrency level")
    ap.add_argument("--clients", default="1,4,16", help="concurrency levels")
    ap.add_argument("--backends", default="torch,onnx-int8", help="attribute backends")
    ap.add_argument("--workers", type=int, default=4, help="server worker threads (--workers)")
    ap.add_argument("--repeat-last", type=int, default=1, help="run the last concurrency level this "
                    "many more times (does the server's memory level off under sustained load?)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    run = args.run.resolve()
    if not (run / "config.yaml").is_file():
        print(f"SKIP: no trained run at {run} (run scripts/main.sh first, or pass --run)")
        return 0
    utk = (args.data or data_root()) / "utkface" / "images"
    if not utk.is_dir():
        print(f"SKIP: no UTKFace photos at {utk} (set FACELAB_DATA to the data folder)")
        return 0
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    levels = [int(x) for x in args.clients.split(",")]
    levels += levels[-1:] * args.repeat_last
    if "onnx-int8" in backends and not (run / "model.int8.onnx").is_file():
        print(f"making {run / 'model.int8.onnx'}: facelab export {run} --format onnx --int8", flush=True)
        subprocess.run([sys.executable, "-m", "facelab", "export", str(run), "--format", "onnx", "--int8"],
                       check=True, cwd=ROOT)

    probes = pick_photos(utk, args.images)
    enrolled = pick_photos(utk, args.enroll, skip=len(probes) and 7)
    enrolled = [p for p in enrolled if p not in probes]
    photos = [(p.name, p.read_bytes()) for p in probes]
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="facelab-serve-load-") as tmp:
        tmp = Path(tmp)
        print(f"face database: {len(enrolled)} identities (mtcnn + dlib-resnet) in {tmp}", flush=True)
        db, key = make_database(tmp, enrolled)
        for backend in backends:
            log = tmp / f"server-{backend}.log"
            t0 = time.perf_counter()
            with server(db, run, backend, args.workers, log) as (base, pid):
                ready_s = time.perf_counter() - t0
                info = httpx.get(base + "/v1/info", headers={"X-API-Key": key}, timeout=30).json()
                assert info["attributes"]["backend"], info
                print(f"\n{backend}: server pid {pid} ready in {ready_s:.1f} s, RSS {rss_mb(pid):.0f} MB; "
                      f"detector {info['detector']}, backend {info['attributes']['backend']}", flush=True)
                for name, data in photos[:2]:  # one warm request per path through the server
                    httpx.post(base + "/v1/analyze", headers={"X-API-Key": key},
                               files={"image": (name, data, "image/jpeg")}, timeout=120).raise_for_status()
                for n in levels:
                    before = rss_mb(pid)
                    res = drive(base, key, photos, n, args.duration)
                    res.update(backend=backend, rss_start_mb=before, rss_end_mb=rss_mb(pid))
                    results.append(res)
                    print(f"  {n:>2} clients: {res['requests']} requests, {res['rps']:.1f} req/s, "
                          f"p50 {res['p50_ms']:.0f} ms, p95 {res['p95_ms']:.0f} ms, p99 {res['p99_ms']:.0f} ms, "
                          f"errors {res['errors']} {res['error_examples'] or ''}, RSS {before:.0f} -> "
                          f"{res['rss_end_mb']:.0f} MB", flush=True)

    print(f"\ncommand: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"\n## POST /v1/analyze on loopback ({dt.date.today()}, {platform.node() or 'this machine'}, "
          f"{os.cpu_count()} CPU cores shared by client and server; {len(photos)} UTKFace photos "
          f"200x200, {args.duration:.0f} s per row, server --workers {args.workers})\n")
    print("| backend | clients | requests | req/s | p50 ms | p95 ms | p99 ms | errors | faces/request | "
          "server RSS start -> end (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(f"| {r['backend']} | {r['clients']} | {r['requests']} | {r['rps']:.1f} | {r['p50_ms']:.0f} | "
              f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} | {r['faces_per_request']:.2f} | "
              f"{r['rss_start_mb']:.0f} -> {r['rss_end_mb']:.0f} |")
    errors = sum(r["errors"] for r in results)
    for backend in backends:
        rows = [r for r in results if r["backend"] == backend]
        growth = rows[-1]["rss_end_mb"] - rows[0]["rss_start_mb"]
        print(f"\n{backend}: server RSS {rows[0]['rss_start_mb']:.0f} -> {rows[-1]['rss_end_mb']:.0f} MB "
              f"over {sum(r['requests'] for r in rows)} requests ({growth:+.0f} MB)")
    print(f"errors in all: {errors}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
