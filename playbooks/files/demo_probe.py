# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Send N requests to a URL (each on a new connection, so every nginx worker gets its share) and print
one JSON object: {"answers": {"<body>": count, ...}, "errors": {"<what>": count}, "requests": N}.
Used by playbooks/demo.yml and the molecule scenario to show which backends serve traffic.

    python3 demo_probe.py http://127.0.0.1:18880/ 20 [--source 127.0.0.2]
"""

import argparse
import http.client
import json
import urllib.parse
from collections import Counter


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("count", type=int)
    parser.add_argument("--source", help="local address to send from (loopback)")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    url = urllib.parse.urlsplit(args.url)
    answers, errors = Counter(), Counter()
    for _request in range(max(0, min(args.count, 10000))):
        connection = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=args.timeout,
                                                source_address=(args.source, 0) if args.source else None)
        try:
            connection.request("GET", url.path or "/", headers={"Connection": "close"})
            response = connection.getresponse()
            body = response.read().decode("utf-8", "replace").strip()
            if response.status == 200:
                answers[body] += 1
            else:
                errors[f"HTTP {response.status}"] += 1
        except OSError as exc:
            errors[type(exc).__name__] += 1
        finally:
            connection.close()
    print(json.dumps({"answers": dict(sorted(answers.items())), "errors": dict(sorted(errors.items())),
                      "requests": args.count}))


if __name__ == "__main__":
    main()
