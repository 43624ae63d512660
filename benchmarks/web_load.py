"""30 concurrent generate requests against `pixel-diffusion serve` on 127.0.0.1: they finish in the
order they were queued (or are cancelled on request), memory stays flat, and status requests are
answered quickly while a job runs.

    python benchmarks/web_load.py                       # writes docs/web_load.md
    python benchmarks/web_load.py --requests 10 --doc /tmp/web.md

The server (uvicorn, in this process, on a free port) serves a small digits run trained here for
a few steps. 30 threads post a generate request each at once (DDPM, --steps steps, --n images);
requests 10 and 20 are cancelled while they wait. While jobs run, a client asks for the status of
the running job every 20 ms and times each answer. The resident memory of the process is read
after a first round of requests and after a second, equal round.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import uvicorn

from pixel_diffusion.config import apply_overrides
from pixel_diffusion.presets import preset
from pixel_diffusion.training import train
from pixel_diffusion.web.server import create_app

from common import ROOT

DOC = ROOT / "docs" / "web_load.md"
TINY = ["data.source=digits", 'network_options={"widths": [8, 16], "groups": 4, "embedding_dim": 8, "embedding_mlp_dim": 16}',
        "batch_size=32", "progress=false", "precision=fp32", "lr_warmup=2", "clusters=0", "preview_every=0"]


def call(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                     method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_round(base: str, requests: int, body: dict, cancel: set[int]) -> dict:
    """Post `requests` generate requests at once; cancel some while they wait; time status calls."""
    with ThreadPoolExecutor(requests) as pool:
        jobs = list(pool.map(lambda k: call(f"{base}/api/generate", body), range(requests)))
    jobs.sort(key=lambda job: int(job["id"]))  # the queue's order is the order of the ids it gave
    for k in cancel:
        call(f"{base}/api/jobs/{jobs[k - 1]['id']}/cancel", {})
    ended, latencies = {}, []
    while len(ended) < len(jobs):
        for job in jobs:
            if job["id"] in ended:
                continue
            start = time.perf_counter()
            state = call(f"{base}/api/jobs/{job['id']}")
            if state["state"] == "running":
                latencies.append(time.perf_counter() - start)
            if state["state"] in ("done", "cancelled", "failed"):
                ended[job["id"]] = (time.perf_counter(), state["state"])
        time.sleep(0.02)
    done = [job["id"] for job in jobs if ended[job["id"]][1] == "done"]
    in_order = [ended[i][0] for i in done] == sorted(ended[i][0] for i in done)
    cancelled = [k + 1 for k, job in enumerate(jobs) if ended[job["id"]][1] == "cancelled"]
    return {"done": len(done), "in_order": in_order, "cancelled": cancelled, "latencies": latencies,
            "failed": sum(state == "failed" for _, state in ended.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        runs = Path(root) / "runs"
        train(apply_overrides(apply_overrides(preset("mnist"), TINY), {"steps": 2, "checkpoint_every": 2}), runs / "digits")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(runs), host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        base, body = f"http://127.0.0.1:{port}", {"run": "digits", "sampler": "ddpm", "steps": args.steps, "n": args.n}
        cancel = {k for k in (10, 20) if k <= args.requests}
        first = one_round(base, args.requests, body, cancel)
        after_first = resident_mb()
        second = one_round(base, args.requests, body, cancel)
        after_second = resident_mb()
        server.should_exit = True

    latencies = sorted(first["latencies"] + second["latencies"])
    ms = [1000 * v for v in latencies]
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    lines = [f"<!-- written by: python benchmarks/web_load.py {' '.join(sys.argv[1:])}".rstrip() + " -->",
             f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
             f"a digits run, DDPM {args.steps} steps, {args.n} images a request.", "",
             "| round | requests | done | cancelled (on request) | failed | done in queue order | resident memory after |",
             "|---:|---:|---:|---|---:|---|---:|"]
    for k, (result, memory) in enumerate(((first, after_first), (second, after_second)), 1):
        lines.append(f"| {k} | {args.requests} | {result['done']} | {result['cancelled']} | {result['failed']} | "
                     f"{'yes' if result['in_order'] else '**no**'} | {memory:.0f} MB |")
    lines += ["", f"Status requests for the running job while jobs ran: {len(ms)}, median {statistics.median(ms):.1f} ms, "
              f"99th percentile {p99:.1f} ms, slowest {ms[-1]:.1f} ms."]
    args.doc.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
