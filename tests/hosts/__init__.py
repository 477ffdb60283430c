"""Test hosts: booted Debian containers (systemd-nspawn) for the role's molecule scenarios.

``python -m tests.hosts --help`` (README.md here). A base root filesystem is built once with
debootstrap and cached outside the checkout; each run starts N containers from it as overlays on a
bridge of its own (198.18.K.0/24), with a per-run ssh key, Debian packages through a caching proxy on
the host's bridge address, and removes everything again (also after a failed or interrupted run).
"""
