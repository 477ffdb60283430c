"""Every Upstream passes ``build_upstream`` (plugins/module_utils/_upstream.py, docs/architecture.md).

The watcher's guards (zero-instance policy ``down``, the removal hold, host-name resolution) change
the servers of an upstream; at 940f60b safety.py and sync.py did it with ``dataclasses.replace``
beside the gate, so a server list the gate would refuse (all backup, none at all) could reach the
file and the interface. Read from the source: no ``Upstream(...)`` outside _upstream.py, and no
``replace(..., servers=/directives=)`` anywhere in plugins/.
"""

import ast
from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
GATE = PLUGINS / "module_utils" / "_upstream.py"


def _called_name(call):
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def builds_beside_the_gate(path):
    """(line, text) of each call in ``path`` that makes an Upstream without build_upstream."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = _called_name(node)
        keywords = {keyword.arg for keyword in node.keywords}
        if (name == "Upstream" and path != GATE) or (name == "replace" and keywords & {"servers", "directives"}):
            found.append((node.lineno, ast.get_source_segment(path.read_text(), node)))
    return found


def test_no_upstream_is_built_beside_build_upstream():
    found = {str(path.relative_to(PLUGINS)): hits for path in sorted(PLUGINS.rglob("*.py"))
             if (hits := builds_beside_the_gate(path))}
    assert found == {}


def test_the_scan_sees_a_build_beside_the_gate(tmp_path):
    """The scan itself: the two shapes 940f60b had are found."""
    sample = tmp_path / "sample.py"
    sample.write_text("from dataclasses import replace\n"
                      "a = replace(previous, servers=())\n"
                      "b = Upstream(name='x', servers=())\n"
                      "c = replace(removal, total=3)\n")
    assert [line for line, _text in builds_beside_the_gate(sample)] == [2, 3]
