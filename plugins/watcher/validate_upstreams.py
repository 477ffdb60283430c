# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check a candidate upstream file with nginx itself, before it replaces the live one.

    python3 plugins/watcher/validate_upstreams.py [--nginx /usr/sbin/nginx] [--load-module M.so] FILE

Builds a throwaway configuration (``events {}`` and ``http { include FILE; }``) in a temporary
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
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
