"""Resilience suite (issue 7): scale events under load against the reload approach, faults, bad input.

Scripts and helpers (docs/resilience.md says what each measures and how to run it):

- ``loadgen.py``          steady HTTP load at a fixed rate plus websocket clients, every request and
                          every websocket drop accounted (a subprocess: its own interpreter and GIL)
- ``ws_echo.py``          websocket echo backends on several loopback ports (a subprocess)
- ``reload_approach.py``  the BASELINE: a re-creation of consul-template (render, ``nginx -s reload``)
- ``faultproxy.py``       a fault-injecting HTTP proxy (a stand-in for a misbehaving interface or Consul)
- ``stack.py``            the two stacks under test (approach A and B), process accounting
- ``scenarios.py``        the scenarios themselves, each returning its figures as a dict
- ``run.py``              the long (or short) run of every scenario, results to tests/output/
- ``test_resilience.py``  the pass/fail properties, at the short sizes (tests/tools/bench.sh --short)
"""
