# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Command line of the watcher.

Exit status: 0 ok; 1 a sync failed (Consul, the file or dyups; details logged); 2 bad usage or
settings; 3 (``--once``) the removal guard held a change back.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream_file import UpstreamFileBusy
from ansible_collections.swallowkeeper.dyups.plugins.watcher import __version__
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as settings_mod
from ansible_collections.swallowkeeper.dyups.plugins.watcher.memory import tune_allocator


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="swallowkeeper-watcher",
        description="Keep nginx upstreams (Tengine dyups, or the stock-nginx Lua flavor) in step with Consul, "
                    "without reloading nginx. The upstream file is written first, then only changed upstreams "
                    "are sent to the interface.")
    p.add_argument("--config", "-c", help="YAML or JSON file with the options below (flags win)")
    p.add_argument("--once", action="store_true", help="one full sync, then exit; the exit status tells the outcome")
    p.add_argument("--dry-run", action="store_true", help="print what would change; write and send nothing")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for option in settings_mod.OPTIONS:
        flag = "--" + option.name.replace("_", "-")
        if option.kind is bool:
            p.add_argument(flag, dest=option.name, default=None, type=_bool,
                           help=f"{option.help} (true/false; default {option.default})")
        elif option.kind is dict:
            continue
        else:
            shown = ",".join(option.default) if isinstance(option.default, list) else option.default
            hint = " (comma-separated)" if option.kind is list else ""
            p.add_argument(flag, dest=option.name, default=None, help=f"{option.help}{hint} (default {shown})")
    return p


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("swallowkeeper")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    flag_values = {name: getattr(args, name) for name in settings_mod.option_names()
                   if getattr(args, name, None) is not None}
    try:
        file_values = settings_mod.load_file(args.config) if args.config else {}
        settings = settings_mod.build(file_values, flag_values, config_file=args.config)
    except settings_mod.SettingsError as exc:
        print(f"swallowkeeper-watcher: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    tune_allocator()
    from ansible_collections.swallowkeeper.dyups.plugins.watcher.daemon import Daemon

    try:
        daemon = Daemon(settings, dry_run=args.dry_run, flag_values=flag_values)
    except (ValidationError, settings_mod.SettingsError, UpstreamFileBusy) as exc:
        logging.getLogger("swallowkeeper.watcher").error("cannot start: %s", exc)
        return 2
    if args.once:
        return daemon.once()
    daemon.install_signals()
    return daemon.run()
