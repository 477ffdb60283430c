# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The swallowkeeper watcher: Consul -> upstream file -> dyups, without reloading nginx.

Not an Ansible plugin: a long-running program that ships inside the collection so that it shares
one source of truth with the modules (plugins/module_utils: name and server rules, the Consul
mapping, the upstream file, the dyups wire format). The role installs it as a service.

Where things are:

- ``settings.py``   every option, its default, the config file and the command line
- ``transport.py``  keep-alive ``http.client`` connections as the transport of the shared clients
- ``consul_source.py``  blocking queries on Consul and the cache of service instances (their answers kept
  small as they are parsed: plugins/module_utils/_consul_answers.py, shared with consul_services)
- ``safety.py``     the zero-instance policy and the mass-removal hold (``RemovalHold``, its window)
- ``owned_state.py``  what the watcher owns beyond the upstream file (pending deletes, a hold), kept beside it
- ``check_budget.py``  the check-peer budget: no change that Tengine's check module cannot hold
- ``zone_fit.py``  Tengine's ``dyups_shm_zone_size``: no change whose body the zone cannot hold (one worker only)
- ``dict_fit.py``  the Lua flavor's shared dict: no change whose entry its free space cannot hold
- ``nginx_processes.py``  new nginx workers noticed (pid file, /proc), every worker's ``/detail`` read
- ``sync.py``       desired upstreams -> file first -> POST/DELETE what changed; drift repair
- ``host_names.py``  servers written as host names: resolved at every sync, left out when they do not resolve
- ``lookup_threads.py``  host-name lookups off the sync loop, bounded threads, one deadline per sync
- ``pushes.py``     push bookkeeping: POSTs and DELETEs the interface has not confirmed, and sending them
- ``metrics.py``    counters, gauges, the histogram Consul answer -> applied, process_* metrics; the loopback
  status / Prometheus endpoint and the opt-in metrics listener with its allow list (docs/monitoring.md)
- ``bounded_http.py``  the listeners' bounds: a connection cap and a request deadline
- ``systemd_notify.py``  READY / WATCHDOG / STOPPING to systemd (Type=notify, WatchdogSec)
- ``daemon.py``     the event loop: coalescing, retries with backoff, signals
- ``cli.py``        ``--once``, ``--dry-run``, exit codes
- ``validate_upstreams.py``  ``nginx -t`` on a candidate upstream file alone (a validate_command)
- ``backoff.py``    capped exponential backoff with jitter
- ``memory.py``     glibc allocator settings and trimming, so RSS follows what the watcher holds
- ``__main__.py``   ``python3 plugins/watcher`` from a checkout, or ``python3 -m
  ansible_collections.swallowkeeper.dyups.plugins.watcher`` where the collection is installed
"""

__version__ = "0.2.0"
