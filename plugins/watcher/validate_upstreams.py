# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check a candidate upstream file with nginx itself, before it replaces the live one.

    python3 plugins/watcher/validate_upstreams.py --nginx /usr/sbin/nginx --conf /etc/nginx/nginx.conf \
        --upstream-file /var/lib/swallowkeeper-dyups/upstreams.conf FILE

With ``--conf``: ``nginx -t`` of the real main configuration with FILE in place of the upstream file
(``module_utils/_validate_config.py``; the watcher's ``validate_config`` setting and the modules'
``validate_config`` option do the same without this script). This is the check to use: it also
catches a block named like an upstream that the configuration defines elsewhere.

    python3 plugins/watcher/validate_upstreams.py [--nginx /usr/sbin/nginx] [--load-module M.so] FILE

Without ``--conf`` (the file alone): builds a throwaway configuration (``events {}`` and ``http { include FILE; }``) in a temporary
prefix and runs ``nginx -t`` on it, so the file is parsed by the very binary that will read it on
the next reload (Tengine's ``check`` directives need Tengine, for instance). Exit status 0 when
nginx accepts it; otherwise nginx's message on stderr and its exit status.

Use it as the watcher's ``validate_command`` (``%s`` is the candidate file)::

    validate_command: "/usr/bin/python3 /opt/swallowkeeper-dyups/validate_upstreams.py --nginx /usr/sbin/nginx %s"
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from typing import List, Optional  # no `from __future__ import annotations` here: typing's own spelling


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="nginx -t on an upstream file alone")
    parser.add_argument("file")
    parser.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx",
                        help="the nginx or Tengine binary that will read the file")
    parser.add_argument("--load-module", action="append", default=[],
                        help="a dynamic module the file's directives need (repeatable)")
    parser.add_argument("--conf", help="the main configuration: check FILE in place of --upstream-file in it")
    parser.add_argument("--upstream-file", help="the upstream file the main configuration includes (with --conf)")
    args = parser.parse_args(argv)
    if args.conf:
        return whole_configuration(args)
    prefix = tempfile.mkdtemp(prefix="swallowkeeper-validate-")
    try:
        conf = os.path.join(prefix, "validate.conf")
        with open(conf, "w", encoding="utf-8") as handle:
            for module in args.load_module:
                handle.write(f"load_module {module};\n")
            handle.write(f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n")
            handle.write(f"events {{}}\nhttp {{\n    include {os.path.abspath(args.file)};\n}}\n")
        result = subprocess.run([args.nginx, "-t", "-q", "-p", prefix + "/", "-c", conf],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            sys.stderr.write(result.stdout.decode("utf-8", "replace"))
        return result.returncode
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def whole_configuration(args: argparse.Namespace) -> int:
    if not args.upstream_file:
        sys.stderr.write("--conf needs --upstream-file\n")
        return 2
    try:
        from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _validate_config
    except ImportError:  # run as a script from the installed tree: .../ansible_collections/swallowkeeper/dyups/plugins/watcher
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)).rsplit(os.sep, 5)[0])
        from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _validate_config
    try:
        _validate_config.check_config(args.nginx, args.conf, args.upstream_file, args.file)
    except _validate_config.ConfigCheckFailed as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
