"""Markdown tables of a resilience run's JSON (tests/resilience/run.py --output FILE), for docs/resilience.md.

    .venv/bin/python tests/resilience/report.py tests/output/resilience-long.json

Prints the tables only; the prose around them in docs/resilience.md is written by hand.
"""

from __future__ import annotations

import argparse
import json
import sys


def _ms(latency):
    if not latency:
        return "–"
    return f"{latency['p50']} / {latency['p99']} / {latency['max']}"


def _failed(part):
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(part.get("failed_by_kind", {}).items()))
    return f"{part.get('failed_requests', 0)}" + (f" ({kinds})" if kinds else "")


def scale_table(results):
    rows = ["| approach | events | reloads | requests | failed | websockets (clients / connects / dropped) "
            "| latency p50 / p99 / max ms | old workers left shutting down, max / mean | nginx RSS max MB "
            "| nginx master kept | converged |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, part in results.items():
        if not key.startswith("scale:"):
            continue
        during = part.get("nginx_during_events", {})
        rows.append(
            f"| {part['label']} | {part['events']} | {part['reloads']} | {part['requests']} | {_failed(part)} "
            f"| {part['ws_clients']} / {part['ws_connects']} / {part['ws_dropped']} | {_ms(part.get('latency_ms'))} "
            f"| {during.get('shutting_down_max', '–')} / {during.get('shutting_down_mean', '–')} "
            f"| {during.get('rss_mb_max', '–')} | {part.get('nginx_master_kept')} | {part.get('converged')} |")
    return "\n".join(rows)


FAULT_DETAILS = ("kills", "file_invalid_after_kill", "temp_files_left", "consul_start_s", "restart_s",
                 "change_after_restart_s", "interface_changed_while_file_unwritable", "write_errors_logged",
                 "recovery_after_next_event_s", "fault_answers", "watcher_alive", "skipped")


def fault_table(results):
    rows = ["| fault | lasted s | requests | failed | websockets dropped | upstreams lost | invalid files seen "
            "| recovered after the fault, s | details |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, part in results.items():
        if not key.startswith("fault:"):
            continue
        details = "; ".join(f"{name} {part[name]}" for name in FAULT_DETAILS if name in part)
        rows.append(
            f"| {part['fault']} | {part.get('duration_s', '–')} | {part.get('requests', '–')} | {_failed(part)} "
            f"| {part.get('ws_dropped', '–')} | {len(part.get('upstreams_lost', []))} "
            f"| {part.get('file_invalid', '–')} of {part.get('file_checks', '–')} | {part.get('recovery_s')} "
            f"| {details} |")
    return "\n".join(rows)


def fuzz_table(results):
    part = results.get("fuzz")
    if not part:
        return ""
    mutations = ", ".join(f"{kind} {count}" for kind, count in sorted(part["mutations"].items()))
    rows = ["| measure | value |", "| --- | --- |"]
    for label, value in (("cases (one mutation kind, 1 to 3 answers each)", part["cases"]),
                         ("Consul answers mutated", part["answers_mutated"]),
                         ("cases whose mutation found no request to mutate", part["not_delivered"]),
                         ("watcher crashes", part["watcher_crashes"]),
                         ("tracebacks in the watcher's log", part["tracebacks_in_log"]),
                         ("invalid upstream files seen", part["file_invalid"]),
                         ("invalid POST bodies sent (of POSTs, DELETEs)",
                          f"{part['invalid_bodies']} (of {part['posts']}, {part['deletes']})"),
                         ("convergence checks / failures", f"{part['convergence_checks']} / "
                                                           f"{len(part['convergence_failures'])}"),
                         ("Consul errors logged", part["log_consul_errors"]),
                         ("watcher RSS at the end, MB", part["watcher_rss_mb_end"]),
                         ("mutations", mutations)):
        rows.append(f"| {label} | {value} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("json_file")
    args = parser.parse_args(argv)
    with open(args.json_file) as handle:
        data = json.load(handle)
    results = data["results"]
    print(f"Run: {data['date']}, {data['sizes']} sizes, {data.get('seconds', '?')} s; command: `{data['command']}`")
    print(f"Machine: {data['machine']}")
    print(f"Violations: {data.get('violations') or 'none'}\n")
    for title, table in (("Scale events under load", scale_table(results)), ("Faults under load", fault_table(results)),
                         ("Fuzzed Consul answers", fuzz_table(results))):
        if table:
            print(f"### {title}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
