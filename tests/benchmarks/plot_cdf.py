"""The CDF of Consul change -> every nginx worker serving it, from bench_watcher.py's JSON, as an SVG.

    .venv/bin/python tests/benchmarks/bench_watcher.py --sizes 1000 --flips 100 --baseline-flips 20 --json run.json
    .venv/bin/python tests/benchmarks/plot_cdf.py run.json docs/figures/flip-cdf.svg [--size 1000]

One panel per kind of change (a health flip; a scale-out, a new instance), one line per watcher and flavor: this
watcher (``ours_*``) and the original approach (``original_*``, tests/benchmarks/original_approach.py), on the Lua
flavor and on Tengine (``tengine_*`` keys). A line ends at the share of attempts that propagated at all within the
benchmark's timeout (the original approach never sees a health flip: a flat line at 0 %). The x axis is
logarithmic. Plain SVG written here (no plotting package needed), so a user redraws the figure from a run of
their own with nothing but the repository's venv.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

KINDS = (("health_flip", "health flip (check critical)"), ("scale_out", "scale-out (new instance)"))
SERIES = (("ours", "", "this watcher, Lua", "#1f77b4", ""), ("ours", "tengine_", "this watcher, Tengine", "#2ca02c", ""),
          ("original", "", "original approach, Lua", "#d62728", "6,4"),
          ("original", "tengine_", "original approach, Tengine", "#ff7f0e", "6,4"))
WIDTH, PANEL_H, LEFT, RIGHT, TOP, GAP = 760, 300, 70, 220, 40, 70


def lines_of(row, kind):
    """(label, colour, dash, samples_ms, attempts) per series that the row has for this kind."""
    found = []
    for who, prefix, label, colour, dash in SERIES:
        entry = row.get(f"{prefix}{who}_{kind}")
        if entry is None:
            continue
        if entry.get("propagated") and "samples_ms" not in entry:
            raise SystemExit(f"{prefix}{who}_{kind} has no samples_ms: the JSON is from a bench_watcher.py older "
                             "than the plot (run it again)")
        found.append((label, colour, dash, entry.get("samples_ms", []), entry["attempts"]))
    return found


def svg(row, title):
    all_samples = [v for kind, _t in KINDS for _l, _c, _d, samples, _a in lines_of(row, kind) for v in samples]
    low = 10 ** math.floor(math.log10(max(min(all_samples or [1.0]), 0.1)))
    high = 10 ** math.ceil(math.log10(max(all_samples or [10.0])))
    plot_w = WIDTH - LEFT - RIGHT
    height = TOP + len(KINDS) * (PANEL_H + GAP)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'font-family="sans-serif" font-size="12">', f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
           f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>']

    def x_of(value):
        return LEFT + plot_w * (math.log10(value) - math.log10(low)) / (math.log10(high) - math.log10(low))

    for index, (kind, kind_title) in enumerate(KINDS):
        top = TOP + index * (PANEL_H + GAP)
        bottom = top + PANEL_H

        def y_of(share, top=top):
            return top + PANEL_H * (1 - share)

        out.append(f'<text x="{LEFT}" y="{top - 8}">{kind_title}: share of changes served by every worker</text>')
        out.append(f'<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#888"/>')
        decade = low
        while decade <= high * 1.0001:
            x = x_of(decade)
            out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#ddd"/>')
            out.append(f'<text x="{x:.1f}" y="{bottom + 15}" text-anchor="middle">{decade:g} ms</text>')
            decade *= 10
        for share in (0, 0.25, 0.5, 0.75, 1.0):
            y = y_of(share)
            out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{int(share * 100)} %</text>')
        for number, (label, colour, dash, samples, attempts) in enumerate(lines_of(row, kind)):
            points, share = [(x_of(low), y_of(0))], 0.0
            for value in samples:
                x = x_of(max(value, low))
                points.append((x, y_of(share)))
                share += 1 / attempts
                points.append((x, y_of(share)))
            points.append((x_of(high), y_of(share)))
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            dashes = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dashes}/>')
            legend_y = top + 16 + number * 34
            median = f"p50 {round(statistics.median(samples), 1):g} ms" if samples else "none propagated"
            out.append(f'<line x1="{WIDTH - RIGHT + 12}" y1="{legend_y}" x2="{WIDTH - RIGHT + 40}" y2="{legend_y}" '
                       f'stroke="{colour}" stroke-width="2"{dashes}/>')
            out.append(f'<text x="{WIDTH - RIGHT + 46}" y="{legend_y + 4}">{label}</text>')
            out.append(f'<text x="{WIDTH - RIGHT + 46}" y="{legend_y + 18}" fill="#555">'
                       f'{len(samples)}/{attempts}, {median}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("json", help="bench_watcher.py --json output")
    parser.add_argument("svg", help="the figure to write")
    parser.add_argument("--size", type=int, help="the size (upstreams) to draw; default: the largest in the run")
    args = parser.parse_args(argv)
    run = json.loads(Path(args.json).read_text(encoding="utf-8"))
    rows = {row["upstreams"]: row for row in run.get("sizes", [])}
    if not rows:
        parser.error(f"{args.json} has no sizes (a --read-msg-timeouts run?)")
    size = args.size if args.size is not None else max(rows)
    if size not in rows:
        parser.error(f"no size {size} in {args.json} (it has {sorted(rows)})")
    title = (f"Consul change -> every worker, {size} upstreams x 3 instances, 2 workers "
             f"({run.get('date', '')}, {run.get('machine', '')})")
    Path(args.svg).parent.mkdir(parents=True, exist_ok=True)
    Path(args.svg).write_text(svg(rows[size], title), encoding="utf-8")
    print(f"plot_cdf: wrote {args.svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
