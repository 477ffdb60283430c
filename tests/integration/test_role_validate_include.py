"""The role's check of an include file before it replaces the live one
(``_tengine_dyups_validate_include_script`` in roles/tengine_dyups/vars/main.yml), run as the role runs
it (``sh -c SCRIPT validate BINARY MAIN INCLUDE CANDIDATE INCLUDE_DIR``) with the real nginx binary.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.nginx_lua import NGINX

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = yaml.safe_load((ROOT / "roles/tengine_dyups/vars/main.yml").read_text())[
    "_tengine_dyups_validate_include_script"]


@pytest.fixture
def conf(tmp_path):
    include_dir = tmp_path / "swallowkeeper-dyups"
    include_dir.mkdir()
    main = tmp_path / "nginx.conf"
    main.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
                    f"http {{\n    include {include_dir}/dyups.conf;\n    include {include_dir}/vhosts.conf;\n}}\n")
    return main, include_dir


def check(main, include, candidate_text, include_dir, tmp_path):
    candidate = tmp_path / "candidate.conf"
    candidate.write_text(candidate_text)
    return subprocess.run(["sh", "-c", SCRIPT, "validate", NGINX, str(main), str(include), str(candidate),
                           str(include_dir)], capture_output=True, text=True, check=False)


def test_a_good_candidate_passes_even_when_the_other_include_is_missing(conf, tmp_path):
    """The include directory was removed (another tool, a cleanup): vhosts.conf is not there yet
    while dyups.conf is checked; it is read as empty, not as an error."""
    main, include_dir = conf
    result = check(main, include_dir / "dyups.conf", "upstream web { server 127.0.0.1:8080; }\n", include_dir,
                   tmp_path)
    assert result.returncode == 0, result.stderr


def test_a_broken_candidate_fails_and_names_the_problem(conf, tmp_path):
    main, include_dir = conf
    (include_dir / "vhosts.conf").write_text("")
    result = check(main, include_dir / "dyups.conf", "upstream web { server 127.0.0.1:8080 weight=0; }\n",
                   include_dir, tmp_path)
    assert result.returncode != 0
    assert "weight" in result.stderr


def test_nothing_to_check_when_the_main_configuration_does_not_include_the_file(conf, tmp_path):
    main, include_dir = conf
    main.write_text("events {}\nhttp {}\n")
    assert check(main, include_dir / "dyups.conf", "not nginx at all", include_dir, tmp_path).returncode == 0


@pytest.fixture
def dropin(tmp_path):
    """The stock nginx drop-in: a main configuration shaped like Debian's, which includes conf.d/*.conf
    inside http {} (the role's files are conf.d/swallowkeeper-dyups*.conf), with a file of someone else's there."""
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "00-site.conf").write_text("upstream site_backend { server 127.0.0.1:8081; }\n")
    main = tmp_path / "nginx.conf"
    main.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
                    f"http {{\n\taccess_log off;\n\tinclude {conf_d}/*.conf;\n}}\n")
    return main, conf_d


def test_dropin_a_new_file_is_checked_in_context_through_the_glob(dropin, tmp_path):
    """The file does not exist yet (a first run): the candidate is checked together with what the glob already
    matches, so a name another drop-in defines is a duplicate (the old script found no include line and passed)."""
    main, conf_d = dropin
    clash = check(main, conf_d / "swallowkeeper-dyups.conf", "upstream site_backend { server 127.0.0.1:9; }\n",
                  conf_d, tmp_path)
    assert clash.returncode != 0
    assert "duplicate upstream" in clash.stderr
    good = check(main, conf_d / "swallowkeeper-dyups.conf", "upstream web { server 127.0.0.1:8080; }\n",
                 conf_d, tmp_path)
    assert good.returncode == 0, good.stderr


def test_dropin_a_broken_candidate_fails_and_an_existing_file_is_replaced_not_doubled(dropin, tmp_path):
    main, conf_d = dropin
    target = conf_d / "swallowkeeper-dyups.conf"
    target.write_text("upstream web { server 127.0.0.1:8080; }\n")
    broken = check(main, target, "upstream web { server 127.0.0.1:8080 weight=0; }\n", conf_d, tmp_path)
    assert broken.returncode != 0
    assert "weight" in broken.stderr
    # the live file defines `web` too: it must not be read beside the candidate
    again = check(main, target, "upstream web { server 127.0.0.1:8082; }\n", conf_d, tmp_path)
    assert again.returncode == 0, again.stderr
    # the copy keeps the rest of the main configuration: a candidate that needs the other drop-in passes
    uses = check(main, conf_d / "swallowkeeper-dyups-vhosts.conf",
                 "server { listen 127.0.0.1:1; location / { proxy_pass http://site_backend; } }\n", conf_d, tmp_path)
    assert uses.returncode == 0, uses.stderr
    assert main.read_text().count("*.conf") == 1


def test_dropin_a_file_the_glob_does_not_match_has_nothing_to_check(dropin, tmp_path):
    main, conf_d = dropin
    assert check(main, tmp_path / "elsewhere.conf", "not nginx at all", conf_d, tmp_path).returncode == 0
