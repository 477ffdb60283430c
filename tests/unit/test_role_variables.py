"""The tengine_dyups role's variables: specs, defaults, use and the generated table agree."""

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "tengine_dyups"
SPECS = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
PUBLIC = re.compile(r"(?<![A-Za-z0-9_])tengine_dyups_[a-z0-9_]+")


def _table_tool():
    spec = importlib.util.spec_from_file_location("role_vars_table", ROOT / "tests" / "tools" / "role-vars-table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", ["docs/role-variables.md", "README.md"])
def test_the_generated_table_is_current(path):
    tool = _table_tool()
    document = (ROOT / path).read_text()
    assert tool.render(document, tool.table()) == document, "run .venv/bin/python tests/tools/role-vars-table.py"


def test_the_table_lists_every_variable_and_suboption():
    table = _table_tool().table()
    for name in SPECS:
        assert f"| `{name}` |" in table
    assert "| `tengine_dyups_vhosts[].locations[].upstream` |" in table


def test_defaults_and_specs_name_the_same_variables():
    assert sorted(DEFAULTS) == sorted(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_default_matches_defaults_main(name):
    assert SPECS[name].get("default") == DEFAULTS[name]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_variable_is_described_and_typed(name):
    assert SPECS[name].get("description"), name
    assert SPECS[name].get("type"), name


def test_the_role_uses_only_variables_it_defines():
    used = set()
    for path in list(ROLE.glob("tasks/*.yml")) + list(ROLE.glob("handlers/*.yml")) + list(ROLE.glob("templates/*.j2")) \
            + list(ROLE.glob("vars/*.yml")):
        used.update(PUBLIC.findall(path.read_text()))
    assert sorted(used - set(DEFAULTS) - set(TAGS)) == []


TAGS = ("tengine_dyups_install", "tengine_dyups_configure", "tengine_dyups_watcher")


def test_the_role_tags_are_prefixed():
    tags = set()
    for path in ROLE.glob("tasks/*.yml"):
        for match in re.finditer(r"tags: \[([^\]]*)\]", path.read_text()):
            tags.update(tag.strip() for tag in match.group(1).split(","))
    assert tags == set(TAGS) | {"always"}


def test_every_defined_variable_is_used():
    text = "".join(path.read_text() for pattern in ("tasks/*.yml", "handlers/*.yml", "templates/*.j2", "vars/*.yml")
                   for path in ROLE.glob(pattern))
    unused = [name for name in DEFAULTS if not re.search(rf"(?<![A-Za-z0-9_]){name}(?![A-Za-z0-9_])", text)]
    assert unused == []
