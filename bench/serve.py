"""Load test of the HTTP scoring server on loopback: torch and onnxruntime backends side by side,
and MLflow's own scoring server for the same version.

    python bench/serve.py [--name cxr-pneumonia] [--alias champion | --version V]
                          [--backends torch,onnx,mlflow] [--clients 1,4,16] [--seconds 60] [--max-requests 2000]

Each backend's server starts as a subprocess on a free loopback port (``run.py serve``; for
``mlflow``, ``mlflow models serve --env-manager local``) with the registry of the current ZenML
store. For each client count, that many threads send one real Kermany test X-ray per request
(base64, cycling over 64 images) until ``--seconds`` pass or ``--max-requests`` are sent.
One JSON line per backend and client count: requests/s, p50/p95/p99 latency, errors (a non-200
answer or a row with an error) and the server's RSS before and after. A last line per backend
probes error handling: a malformed request and a 4x-limit body, what status came back and
whether the answer carried a stack trace or the request's own data.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import requests

from cxr.data.ingest import data_dir
from cxr.lifecycle import DEFAULT_MODEL_NAME
from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[1]
SECRET = "c2VjcmV0LXBpeGVscw"  # base64 of a marker: must never come back in an answer


def images(count: int = 64) -> list[str]:
    """Base64 of real Kermany test X-rays (the files as a client would send them)."""
    files = sorted((data_dir() / "kermany-pneumonia-224" / "test" / "images").iterdir())[:count]
    return [base64.b64encode(p.read_bytes()).decode() for p in files]


def start(backend: str, name: str, version: int, port: int, log: Path) -> subprocess.Popen:
    """The backend's server process, once it answers /ping (or /health)."""
    if backend == "mlflow":
        from pipelines.runner import tracking_uri

        command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}/{version}",
                   "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
        env = os.environ | {"MLFLOW_TRACKING_URI": tracking_uri(),
                            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    else:
        command = [sys.executable, "run.py", "serve", "--name", name, "--version", str(version), "--port", str(port),
                   "--backend", backend]
        env = dict(os.environ)
    server = subprocess.Popen(command, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 300
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"{backend} server exited: {log.read_text()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).ok:
                return server
        except requests.ConnectionError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"{backend} server did not answer within 300 s")


def rss_mb(server: subprocess.Popen) -> float:
    """Resident memory of the server and its children, MB."""
    process = psutil.Process(server.pid)
    return round(sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2 ** 20, 1)


def load(url: str, encoded: list[str], clients: int, seconds: float, max_requests: int) -> dict:
    """``clients`` threads sending single-image requests; latency percentiles and errors."""
    latencies: list[float] = []
    errors = [0]
    sent = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(index: int) -> None:
        session = requests.Session()
        k = index
        while time.perf_counter() < stop:
            with lock:
                if sent[0] >= max_requests:
                    return
                sent[0] += 1
            body = {"dataframe_split": {"columns": ["id", "image"], "data": [[str(k), encoded[k % len(encoded)]]]}}
            start = time.perf_counter()
            try:
                response = session.post(url, json=body, timeout=120)
                ok = response.status_code == 200 and not response.json()["predictions"][0].get("error")
            except (requests.RequestException, ValueError, KeyError):
                ok = False
            with lock:
                latencies.append(time.perf_counter() - start)
                errors[0] += not ok
            k += clients

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "seconds": round(elapsed, 1), "requests_per_s": round(len(latencies) / elapsed, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "errors": errors[0]}


def probe(url: str, limit_mb: float) -> dict:
    """Status and leaks of a malformed request (not base64, carrying a marker) and a 4x-limit body."""
    bad = requests.post(url, json={"dataframe_split": {"columns": ["image"], "data": [[f"!!{SECRET}!!"]]}}, timeout=60)
    big = json.dumps({"dataframe_split": {"columns": ["image"], "data": [["A" * int(4 * limit_mb * 2 ** 20)]]}})
    try:
        oversized = requests.post(url, data=big, headers={"Content-Type": "application/json"}, timeout=300)
        big_status, big_length = oversized.status_code, len(oversized.content)
    except requests.RequestException as error:
        big_status, big_length = type(error).__name__, 0
    return {"malformed_status": bad.status_code, "malformed_answer_bytes": len(bad.content),
            "stack_trace_in_answer": "Traceback" in bad.text, "request_echoed": SECRET in bad.text,
            "oversized_body_mb": round(len(big) / 2 ** 20, 1), "oversized_status": big_status,
            "oversized_answer_bytes": big_length}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--version", type=int)
    parser.add_argument("--backends", default="torch,onnx,mlflow")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-requests", type=int, default=2000)
    args = parser.parse_args()
    from pipelines.runner import registered

    version = args.version or registered(args.name, args.alias)[0]
    encoded = images()
    logs = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    for backend in args.backends.split(","):
        port = free_port()
        began = time.perf_counter()
        server = start(backend, args.name, version, port, logs / f"{backend}.log")
        ready = time.perf_counter() - began
        url = f"http://127.0.0.1:{port}/invocations"
        try:
            load(url, encoded, 1, 5, 10)  # warm-up, not reported
            for clients in (int(c) for c in args.clients.split(",")):
                before = rss_mb(server)
                figures = load(url, encoded, clients, args.seconds, args.max_requests)
                print(json.dumps({"bench": "serve", "backend": backend, "version": version, "clients": clients,
                                  **figures, "rss_start_mb": before, "rss_end_mb": rss_mb(server),
                                  "startup_s": round(ready, 1)}), flush=True)
            print(json.dumps({"bench": "serve-errors", "backend": backend, **probe(url, 64)}), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
