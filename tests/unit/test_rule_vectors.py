"""The shared vectors of directives and POST bodies, and the rule ids every vector file must cover.

tests/vectors/*.json are run by these tests and by the Lua flavor's (tests/integration/test_lua_rules.py):
both sides must give the same rule id for an invalid input and the same canonical output for a valid one.
Names and servers are checked in test_names.py and test_servers.py.
"""

import json
import re
from pathlib import Path

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._directives import parse_directive
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"
MODULE_UTILS = ROOT / "plugins" / "module_utils"


def cases(kind):
    return json.loads((VECTORS / f"{kind}.json").read_text())["cases"]


@pytest.mark.parametrize("case", cases("directives"), ids=lambda case: case["input"][:40] or "empty")
def test_directive_vector(case):
    if case["valid"]:
        assert parse_directive(case["input"]).text == case["text"]
    else:
        with pytest.raises(ValidationError) as caught:
            parse_directive(case["input"])
        assert (caught.value.rule_id, str(caught.value)) == (case["rule"], case["problem"])


@pytest.mark.parametrize("case", cases("bodies"), ids=lambda case: case["body"][:40])
def test_body_vector(case):
    """A POST body is the content of one upstream block: what the file parser makes of that block."""
    text = "upstream x {\n" + case["body"] + "\n}\n"
    if case["valid"]:
        data = _upstream_file.parse(text)["x"].to_dict()
        assert (data["servers"], data["directives"]) == (case["servers"], case["directives"])
    else:
        with pytest.raises(ValidationError) as caught:
            _upstream_file.parse(text)
        assert (caught.value.rule_id, str(caught.value)) == (case["rule"], case["problem"])


# Rules that only Python input can break (dicts, non-strings, the file around the blocks, /detail
# answers): the Lua flavor reads nothing but text statements of one block.
PYTHON_ONLY = {
    "name.type", "server.address_type", "server.type", "server.dict_keys", "server.host_type",
    "server.host_address_mismatch", "server.port_twice", "server.no_address", "directive.type",
    "upstream.keys", "file.case_clash", "name.case_clash", "file.expected_upstream", "file.unclosed", "file.defined_twice",
    "file.symlink", "file.not_regular",
    "detail.line", "detail.field", "server.backup_flag", "server.down_flag",
}
# The ids _servers.py builds with f"server.{key}_int" / f"server.{key}_range" / f"server.{key}_flag".
NUMBER_IDS = {f"server.{key}_{kind}" for key in ("weight", "max_fails", "max_conns") for kind in ("int", "range")}
RULE_ID = re.compile(r'(?<=")((?:name|server|directive|directives|upstream|block|file|detail)\.[a-z0-9_]+)(?=")')


def test_every_rule_has_a_shared_vector():
    """Each rule id the Python rules raise (literally) is in a vector file, or is Python-only by nature."""
    raised = NUMBER_IDS | {"server.backup_flag", "server.down_flag"}
    for module in ("_names.py", "_servers.py", "_directives.py", "_upstream.py", "_upstream_file.py"):
        raised.update(RULE_ID.findall((MODULE_UTILS / module).read_text()))
    covered = {case["rule"] for kind in ("names", "servers", "directives", "bodies") for case in cases(kind)
               if not case["valid"]}
    assert raised - PYTHON_ONLY - covered == set()
    assert covered <= raised, covered - raised
