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
