"""What the benchmarks share: running `kr run` in its own process and reading its summary."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["breastmnist", "pneumoniamnist"])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--data-root", default=None)
    p.add_argument("--set", action="append", help="KEY=VALUE passed to every run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per dataset and seed (`seed=`)")
    p.add_argument("--out", default="runs/benchmarks")
    p.add_argument("--runs", nargs="+", help="read these finished run folders instead of running anew")
    p.add_argument("--verbose", action="store_true", help="show the runs' progress")
    return p


def summaries(args: argparse.Namespace, out_root: Path) -> list[tuple[str, dict | None, str]]:
    """(dataset, summary or None, error text) per dataset and seed, from --runs or from fresh `kr run` processes."""
    if args.runs:
        return [(Path(r).name, json.loads((Path(r) / "summary.json").read_text()), "") for r in args.runs]
    rows = []
    for dataset, seed in ((d, s) for d in args.datasets for s in args.seeds):
        out = out_root / f"{dataset}-seed{seed}"
        cmd = [
            sys.executable,
            "-m",
            "kr.cli",
            "run",
            "--dataset",
            dataset,
            "--profile",
            args.profile,
            "--out",
            str(out),
        ]
        if args.data_root:
            cmd += ["--data-root", args.data_root]
        for item in [*(args.set or []), f"seed={seed}"]:
            cmd += ["--set", item]
        proc = subprocess.run(cmd, capture_output=not args.verbose, text=True, check=False)
        if proc.returncode != 0:
            rows.append((dataset, None, (proc.stderr or "")[-2000:]))
        else:
            rows.append((dataset, json.loads((out / "summary.json").read_text()), ""))
    return rows


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path
