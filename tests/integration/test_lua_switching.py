"""Traffic switching without a reload: real nginx (2 workers), six real backends, real load.

After a POST returned, every request that starts afterwards, on any worker and on any connection
(new or kept alive), goes to the new set; during 100 switches under steady load (Python clients
checking every answer, plus wrk) no request fails and the master and its workers stay the same
processes.
"""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import threading
import time

from tests.support.backends import make_backends_fixture
from tests.support.nginx_lua import nginx_lua_factory  # noqa: F401  (fixture)  # pylint: disable=unused-import  # pytest fixtures


six_backends = make_backends_fixture(6)


def body_for(ports):
    return "".join(f"server 127.0.0.1:{port};\n" for port in ports)


def switch(nginx, ports):
    status, text, _unused = nginx.api("POST", "/upstream/web", body_for(ports))
    assert (status, text) == (200, "success")


def test_after_a_post_every_request_on_every_worker_goes_to_the_new_set(nginx_lua_factory, six_backends):
    nginx = nginx_lua_factory(workers=2)
    ports = six_backends.ports
    sets = [ports[:3], ports[3:], ports[::2], ports[1:2]]
    kept = [http.client.HTTPConnection("127.0.0.1", nginx.proxy_port, timeout=10) for _unused in range(6)]
    try:
        for round_number in range(12):
            chosen = sets[round_number % len(sets)]
            switch(nginx, chosen)
            workers = set()
            for _unused in range(30):                               # new connections, spread by reuseport
                status, text, headers = nginx.request("/u/web/")
                assert status == 200 and int(text) in chosen, (round_number, text, chosen)
                workers.add(headers["x-dyups-worker"])
            for connection in kept:                           # connections opened before the POST
                connection.request("GET", "/u/web/")
                response = connection.getresponse()
                port = int(response.read())
                assert response.status == 200 and port in chosen, (round_number, port, chosen)
                workers.add(response.getheader("X-Dyups-Worker"))
            assert workers == set(map(str, nginx.worker_pids())), "both workers must have answered"
    finally:
        for connection in kept:
            connection.close()


class LoadClient(threading.Thread):
    """Requests in a loop on one kept-alive connection (reopened every 50 requests); records each one."""

    def __init__(self, port, stop):
        super().__init__(daemon=True)
        self.port = port
        self.stop_event = stop
        self.records = []      # (started, ended, status, backend port or None, worker)
        self.errors = []

    def run(self):
        connection = None
        count = 0
        while not self.stop_event.is_set():
            if connection is None or count % 50 == 0:
                if connection is not None:
                    connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            count += 1
            started = time.monotonic()
            try:
                connection.request("GET", "/u/web/")
                response = connection.getresponse()
                text = response.read().decode()
                ended = time.monotonic()
                port = int(text) if response.status == 200 else None
                self.records.append((started, ended, response.status, port, response.getheader("X-Dyups-Worker")))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.errors.append(repr(exc))
                connection.close()
                connection = None
        if connection is not None:
            connection.close()


def parse_wrk(output):
    requests = re.search(r"(\d+) requests in", output)
    return {
        "requests": int(requests.group(1)) if requests else 0,
        "non_2xx": re.search(r"Non-2xx or 3xx responses: (\d+)", output),
        "socket_errors": re.search(r"Socket errors: (.*)", output),
    }


def test_hundred_switches_under_load_fail_no_request(nginx_lua_factory, six_backends):
    nginx = nginx_lua_factory(workers=2)
    ports = six_backends.ports
    sets = [ports[:3], ports[3:], ports[::2], ports[1::2], ports[:1], ports]
    switch(nginx, sets[0])
    master, workers = nginx.master_pid(), nginx.worker_pids()

    wrk = None
    if shutil.which("wrk"):
        wrk = subprocess.Popen(["wrk", "-t1", "-c8", "-d8s", "-H", "X-Dyups-Upstream: web", nginx.proxy_url + "/"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop = threading.Event()
    clients = [LoadClient(nginx.proxy_port, stop) for _unused in range(4)]
    for client in clients:
        client.start()
    switches = []                        # (POST answered at, set) ; the set holds from then on
    try:
        time.sleep(0.3)
        for number in range(100):
            chosen = sets[(number + 1) % len(sets)]
            before = time.monotonic()
            switch(nginx, chosen)
            switches.append((before, time.monotonic(), chosen))
            time.sleep(0.03)
        time.sleep(0.2)
    finally:
        stop.set()
        for client in clients:
            client.join(15)
        wrk_output = wrk.communicate(timeout=30)[0] if wrk else ""

    records = [record for client in clients for record in client.records]
    errors = [error for client in clients for error in client.errors]
    assert not errors, errors[:5]
    assert len(records) > 1000, f"too little load: {len(records)} requests"
    failed = [record for record in records if record[2] != 200]
    assert not failed, failed[:5]

    checked = 0
    stale = []
    for index, (_before, answered, chosen) in enumerate(switches):
        # a request that overlaps the next POST may already see the next set: only those that
        # started after this POST's answer and ended before the next POST was sent are checked
        next_start = switches[index + 1][0] if index + 1 < len(switches) else float("inf")
        for started, ended, _status, port, worker in records:
            if answered < started and ended < next_start:
                checked += 1
                if port not in chosen:
                    stale.append((index, port, chosen, worker))
    assert not stale, f"{len(stale)} requests started after a POST went to the old set: {stale[:5]}"
    assert checked > 500, f"only {checked} requests started between switches"
    assert len({record[4] for record in records}) == 2, "both workers must have carried the load"

    assert nginx.master_pid() == master
    assert nginx.worker_pids() == workers, "no worker was replaced (no reload, no crash)"
    assert "[alert]" not in nginx.error_log_text() and "[crit]" not in nginx.error_log_text()

    if wrk:
        result = parse_wrk(wrk_output)
        assert result["requests"] > 1000, wrk_output
        assert result["non_2xx"] is None, wrk_output
        assert result["socket_errors"] is None, wrk_output
