"""Kill a training run at random moments, resume it each time, and check that it ends as if it had
never been interrupted and that no command ever meets a damaged checkpoint.

    python benchmarks/chaos.py                  # 25 kills; writes docs/reliability_chaos.md
    python benchmarks/chaos.py --kills 5 --doc /tmp/chaos.md

A small digits run (the mnist preset narrowed, a checkpoint every 4 steps) is trained once without
a fault. The same command is then started again and again on a second folder and killed with
SIGKILL: one kill in three is aimed at a checkpoint write (the moment a temporary checkpoint folder
appears), the others fall at a random moment within the first second of training. After every kill
each checkpoint folder the run lists must pass its manifest, and the run must load and sample as
`pixel-diffusion sample` loads it. Once every kill is done, the command runs to the end; its final
weights must equal the uninterrupted run's bit for bit, and its log must hold each step once.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from pixel_diffusion import checkpoints
from pixel_diffusion.runs import load_run

from common import ROOT

DOC = ROOT / "docs" / "reliability_chaos.md"
RECIPE = ["--preset", "mnist", "--checkpoint-every", "4", "--no-progress", "data.source=digits",
          'network_options={"widths": [8, 16], "groups": 4, "embedding_dim": 8, "embedding_mlp_dim": 16}',
          "batch_size=32", "log_every=1", "preview_every=0", "precision=fp32", "lr_warmup=2", "clusters=0"]


def command(out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "pixel_diffusion", "train", "--steps", str(steps), "--out", str(out), *RECIPE]


def logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def kill_once(run: Path, steps: int, aim_at_write: bool, rng: random.Random) -> dict:
    """Start the run, wait for its training to start, kill it: at a checkpoint write, or after a
    random delay. Returns what happened."""
    before = logged_steps(run)
    process = subprocess.Popen(command(run, steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(logged_steps(run)) <= len(before) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # until it has trained one step past its resume point
    writing = False
    if aim_at_write:
        while process.poll() is None and time.monotonic() < deadline:
            if any((run / checkpoints.CHECKPOINTS).glob(".step-*")):
                writing = True
                break
            time.sleep(0.0005)
    else:
        time.sleep(rng.uniform(0, 1.0))
        writing = any((run / checkpoints.CHECKPOINTS).glob(".step-*"))
    finished = process.poll() is not None
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return {"logged": (logged_steps(run) or [0])[-1], "writing": writing, "finished": finished}


def check_readers(run: Path) -> tuple[str, bool]:
    """Every listed checkpoint passes its manifest, and the run loads and samples."""
    intact = True
    for folder in checkpoints.list_checkpoints(run):
        try:
            checkpoints.verify_checkpoint(folder)
        except checkpoints.CheckpointError:
            intact = False
    latest = checkpoints.latest_checkpoint(run)
    if latest is None:
        return "none yet", intact
    loaded = load_run(run)
    loaded.sample(1, steps=2, progress=False)
    return latest.name, intact


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for name in ("model", "ema") for k, v in load_file(folder / f"{name}.safetensors").items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as root:
        whole, broken = Path(root) / "whole", Path(root) / "broken"
        subprocess.run(command(whole, args.steps), check=True, stdout=subprocess.DEVNULL)
        rows = []
        for k in range(args.kills):
            happened = kill_once(broken, args.steps, aim_at_write=k % 3 == 2, rng=rng)
            latest, intact = check_readers(broken)
            rows.append({**happened, "latest": latest, "intact": intact})
            print(f"kill {k + 1}: {rows[-1]}", flush=True)
            if happened["finished"]:
                break
        subprocess.run(command(broken, args.steps), check=True, stdout=subprocess.DEVNULL)
        a, b = weights(checkpoints.latest_checkpoint(whole)), weights(checkpoints.latest_checkpoint(broken))
        identical = a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
        once = logged_steps(broken) == list(range(1, args.steps + 1))

    lines = [f"<!-- written by: python benchmarks/chaos.py {' '.join(sys.argv[1:])}".rstrip() + " -->",
             f"{len(rows)} SIGKILLs of a {args.steps}-step digits run (a checkpoint every 4 steps), each followed by "
             f"a resume; seed {args.seed}.", "",
             "| kill | aimed at | last step logged | checkpoint write under way | newest checkpoint after | listed checkpoints intact, run samples |",
             "|---:|---|---:|---|---|---|"]
    lines += [f"| {k + 1} | {'a checkpoint write' if k % 3 == 2 else 'a random moment'} | {r['logged']} | "
              f"{'yes' if r['writing'] else 'no'} | {r['latest']} | {'yes' if r['intact'] else '**no**'} |"
              for k, r in enumerate(rows)]
    lines += ["", f"Final weights (model and EMA) equal to the uninterrupted run's, bit for bit: "
              f"**{'yes' if identical else 'no'}**; every step logged once: **{'yes' if once else 'no'}**."]
    args.doc.write_text("\n".join(lines) + "\n")
    print(f"identical: {identical}; steps logged once: {once}; wrote {args.doc}")
    if not (identical and once and all(r["intact"] for r in rows)):
        sys.exit(1)


if __name__ == "__main__":
    main()
