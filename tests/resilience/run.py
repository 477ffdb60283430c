"""Run the resilience scenarios (long sizes by default) and write their figures as JSON.

    .venv/bin/python tests/resilience/run.py                        # LONG sizes, every part
    .venv/bin/python tests/resilience/run.py --short                # SHORT sizes (as CI's pytest run)
    .venv/bin/python tests/resilience/run.py --only scale:A,scale:B,fault:consul_429,fuzz
    options: --output FILE (default tests/output/resilience-{long,short}.json) --seed N

Parts: ``scale:A``, ``scale:B`` (worker_shutdown_timeout set), ``scale:B0`` (not set), ``fault:NAME``
for NAME in scenarios.FAULTS, ``fuzz``. Every server is started on loopback and stopped at the
end of its part. Exit status 1 when a property that must hold did not (see ``violations``):
approach A lost no request, dropped no websocket, converged; no fault lost an upstream or left an
invalid file; the fuzzed watcher never crashed, wrote an invalid file or posted an invalid body.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.collection import ensure_importable  # noqa: E402

ensure_importable()

from tests.resilience import scenarios  # noqa: E402

ALL_PARTS = ([f"scale:{a}" for a in scenarios.APPROACHES] + ["rolling"] + [f"fault:{f}" for f in scenarios.FAULTS]
             + ["fuzz"])


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": model,
            "python": platform.python_version()}


def run_part(part, sizes, workdir, seed):
    kind, _sep, name = part.partition(":")
    if kind == "scale":
        return scenarios.scale_events(workdir, name, sizes["scale"], seed=seed)
    if kind == "fault":
        return scenarios.run_fault(name, workdir, sizes["faults"], seed=seed + 4)
    if kind == "rolling":
        return scenarios.rolling_deploy(workdir, sizes["rolling"])
    if kind == "fuzz":
        return scenarios.fuzz_consul_answers(workdir, sizes["fuzz"], seed=seed + 16)
    raise SystemExit(f"unknown part {part!r}; known: {', '.join(ALL_PARTS)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--short", action="store_true", help="the SHORT sizes (CI)")
    parser.add_argument("--only", default="", help="comma-separated parts (default: all)")
    parser.add_argument("--output")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    # SIGTERM (tests/tools/bench.sh's timeout, an operator) unwinds like Ctrl-C: every stack is stopped
    signal.signal(signal.SIGTERM, lambda *_args: sys.exit(143))
    size_name = "short" if args.short else "long"
    sizes = scenarios.SHORT if args.short else scenarios.LONG
    parts = [p for p in args.only.split(",") if p] or ALL_PARTS
    output = Path(args.output or ROOT / "tests" / "output" / f"resilience-{size_name}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(), "sizes": size_name,
              "parameters": sizes, "command": " ".join([sys.executable, *sys.argv]), "results": {}}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="resilience-") as tmp:
        for part in parts:
            part_started = time.monotonic()
            print(f"--- {part} ...", flush=True)
            try:
                result = run_part(part, sizes, Path(tmp), args.seed)
            except Exception as exc:  # report the part as failed, keep running the others
                result = {"error": f"{type(exc).__name__}: {exc}"[:3000]}
            result["part_seconds"] = round(time.monotonic() - part_started, 1)
            report["results"][part] = result
            shown = {k: v for k, v in result.items() if k not in ("first_failures", "first_ws_drops", "nginx_idle",
                                                                  "nginx_at_last_event", "changes", "moves")}
            print(json.dumps(shown, default=str), flush=True)
            output.write_text(json.dumps(report, indent=1, default=str))
    report["seconds"] = round(time.monotonic() - started, 1)
    report["violations"] = scenarios.violations(report["results"])
    output.write_text(json.dumps(report, indent=1, default=str))
    print(f"=== {len(parts)} part(s) in {report['seconds']} s; results in {output}")
    for line in report["violations"]:
        print(f"VIOLATION: {line}")
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
