"""The upstream file: render, parse, and an atomic replace that a crash cannot tear."""

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from tests.support.collection import COLLECTIONS

A = build_upstream("WebappReadonly", ["10.0.0.2:8080 weight=2", "10.0.0.1:8080"], ["keepalive 16"])
B = build_upstream("WebappReadonly_b", ["[::1]:8080 backup", "app.example.internal:80"], ["least_conn"])
OLD = _upstream_file.render([A])
NEW = _upstream_file.render([A, B])


def test_render_is_sorted_and_parses_back():
    text = _upstream_file.render([B, A])
    assert text == _upstream_file.render([A, B])
    assert text.startswith("# Upstreams managed by swallowkeeper.dyups")
    assert "upstream WebappReadonly {\n    server 10.0.0.1:8080;\n    server 10.0.0.2:8080 weight=2;\n" \
           "    keepalive 16;\n}\n" in text
    assert "upstream WebappReadonly_b {\n    least_conn;\n" in text
    assert _upstream_file.parse(text) == {"WebappReadonly": A, "WebappReadonly_b": B}


def test_parse_hand_written():
    text = textwrap.dedent("""\
        # by hand
        upstream a { server 10.0.0.1:80 weight=2; server 10.0.0.2:80;  # two
          keepalive 8; }
        upstream b {
            check_http_send "GET / HTTP/1.0\\r\\n\\r\\n";
            server 10.0.0.3:80;
            check type=http;
        }
    """)
    parsed = _upstream_file.parse(text)
    assert parsed["a"] == build_upstream("a", ["10.0.0.1:80 weight=2", "10.0.0.2:80"], ["keepalive 8"])
    assert parsed["b"].directive_lines() == ["check type=http;", 'check_http_send "GET / HTTP/1.0\\r\\n\\r\\n";']


@pytest.mark.parametrize("text, problem", [
    ("server 10.0.0.1:80;", "line 1"),
    ("upstream a {\n server 10.0.0.1:80;\n", "is not closed"),
    ("upstream a {\n server 10.0.0.1:80\n}", "missing ';'"),
    ("upstream a {\n\n server 10.0.0.1:0;\n}", "the port 0 is outside 1-65535"),
    ("upstream a { server 10.0.0.1:80; }\nupstream a { server 10.0.0.1:80; }", "upstream a is defined twice"),
    ("upstream a { server 10.0.0.1:80; location / { } }", "blocks inside an upstream are not supported"),
    ("upstream a { ; }", "an empty statement"),
    ("upstream a { server 10.0.0.1:80; foo 1; }", "unknown upstream directive 'foo'"),
    ('upstream a { check_http_send "x; }', "a double quote is not closed"),
    ("upstream bad-{ {", "line 1"),
])
def test_parse_errors_name_the_line(text, problem):
    with pytest.raises(ValidationError) as caught:
        _upstream_file.parse(text)
    assert problem in str(caught.value)
    assert "line" in str(caught.value)


def test_read_absent_file(tmp_path):
    assert _upstream_file.read(str(tmp_path / "nope.conf")) == {}
    assert _upstream_file.read_text(str(tmp_path / "nope.conf")) == (None, {})


def test_read_text_gives_the_text_and_what_it_holds(tmp_path):
    path = tmp_path / "upstreams.conf"
    path.write_text("upstream a { server 10.0.0.1:80; keepalive 2; }\n")
    text, upstreams = _upstream_file.read_text(str(path))
    assert text == path.read_text() and upstreams == {"a": build_upstream("a", ["10.0.0.1:80"], ["keepalive 2"])}


def test_the_file_is_never_read_through_a_symbolic_link(tmp_path):
    """A link where the upstream file goes (the directory is the watcher's: a user of it could plant one to
    make a root-run module read /etc/shadow): refused, and nothing of the target's text in the error."""
    secret = tmp_path / "secret"
    secret.write_text("root:$6$hash-of-the-password:19000:0:99999:7:::\n")
    link = tmp_path / "upstreams.conf"
    link.symlink_to(secret)
    with pytest.raises(ValidationError) as caught:
        _upstream_file.read_text(str(link))
    assert caught.value.rule_id == "file.symlink" and "symbolic link" in str(caught.value)
    assert "hash-of-the-password" not in str(caught.value)
    valid = tmp_path / "valid.conf"
    valid.write_text("upstream a { server 10.0.0.1:80; }\n")
    link.unlink()
    link.symlink_to(valid)                     # even a link to a valid file
    with pytest.raises(ValidationError, match="symbolic link"):
        _upstream_file.read(str(link))


def test_a_fifo_or_a_directory_where_the_file_goes_is_refused_at_once(tmp_path):
    fifo = tmp_path / "upstreams.conf"
    os.mkfifo(fifo)                            # open() of a FIFO blocks until a writer comes: never here
    with pytest.raises(ValidationError) as caught:
        _upstream_file.read_text(str(fifo))
    assert caught.value.rule_id == "file.not_regular"
    with pytest.raises(ValidationError, match="not a regular file"):
        _upstream_file.read_text(str(tmp_path))


def leftovers(directory):
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def test_replace_keeps_mode_and_owner(tmp_path):
    path = tmp_path / "up.conf"
    path.write_text(OLD)
    os.chmod(path, 0o640)
    if os.geteuid() == 0:
        os.chown(path, 1234, 4321)
    assert _upstream_file.replace_file(str(path), NEW) is None
    assert path.read_text() == NEW
    info = os.stat(path)
    assert stat.S_IMODE(info.st_mode) == 0o640
    if os.geteuid() == 0:
        assert (info.st_uid, info.st_gid) == (1234, 4321)
    assert leftovers(tmp_path) == []


def test_new_file_gets_the_default_or_given_mode(tmp_path):
    _upstream_file.replace_file(str(tmp_path / "a.conf"), NEW)
    _upstream_file.replace_file(str(tmp_path / "b.conf"), NEW, mode=0o600)
    assert stat.S_IMODE(os.stat(tmp_path / "a.conf").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "b.conf").st_mode) == 0o600


def test_backup_copy_holds_the_old_text(tmp_path):
    path = tmp_path / "up.conf"
    path.write_text(OLD)
    backup = _upstream_file.replace_file(str(path), NEW, backup=True)
    assert backup and os.path.dirname(backup) == str(tmp_path) and backup.endswith("~")
    assert open(backup).read() == OLD
    assert path.read_text() == NEW
    # no backup of a file that did not exist
    assert _upstream_file.replace_file(str(tmp_path / "fresh.conf"), NEW, backup=True) is None


def test_validate_failing_leaves_the_file_untouched(tmp_path):
    path = tmp_path / "up.conf"
    path.write_text(OLD)
    before = os.stat(path)
    command = f"{sys.executable} -c \"import sys; print('bad file', sys.argv[1]); sys.exit(3)\" %s"
    with pytest.raises(_upstream_file.ValidateCommandFailed) as caught:
        _upstream_file.replace_file(str(path), NEW, backup=True, validate=command)
    assert caught.value.returncode == 3 and "bad file" in caught.value.output
    assert path.read_text() == OLD
    assert os.stat(path).st_ino == before.st_ino
    assert sorted(os.listdir(tmp_path)) == ["up.conf"]  # no temp file, no backup


def test_validate_sees_the_new_content(tmp_path):
    path = tmp_path / "up.conf"
    seen = tmp_path / "seen"
    command = f"{sys.executable} -c \"import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])\" %s {seen}"
    _upstream_file.replace_file(str(path), NEW, validate=command)
    assert seen.read_text() == NEW == path.read_text()


def test_validate_needs_the_placeholder(tmp_path):
    with pytest.raises(ValidationError):
        _upstream_file.replace_file(str(tmp_path / "up.conf"), NEW, validate="true")
    assert leftovers(tmp_path) == []


def test_rename_failing_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "up.conf"
    path.write_text(OLD)

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_upstream_file.os, "replace", broken_replace)
    with pytest.raises(OSError):
        _upstream_file.replace_file(str(path), NEW)
    assert path.read_text() == OLD
    assert leftovers(tmp_path) == []


CRASHING_WRITER = textwrap.dedent("""\
    import os, sys, time
    sys.path.insert(0, {collections!r})
    from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file

    def stop_before_rename(src, dst):
        with open({marker!r}, "w") as handle:
            handle.write(src)
        time.sleep(60)          # killed -9 here: the temp file is written and synced, the rename not done

    _upstream_file.os.replace = stop_before_rename
    _upstream_file.replace_file({path!r}, open({new!r}).read())
""")


def test_crash_between_write_and_rename_leaves_the_old_file_whole(tmp_path):
    path, marker, new = tmp_path / "up.conf", tmp_path / "marker", tmp_path / "new.txt"
    path.write_text(OLD)
    new.write_text(NEW)
    script = CRASHING_WRITER.format(collections=str(COLLECTIONS), marker=str(marker), path=str(path), new=str(new))
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() or not marker.read_text():
            assert child.poll() is None, "the writer exited before reaching the rename"
            assert time.monotonic() < deadline, "the writer did not reach the rename in 30 s"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    assert path.read_text() == OLD                        # the old file, whole
    temp = marker.read_text()
    assert os.path.dirname(temp) == str(tmp_path)         # the temp file is beside it (same file system)
    assert open(temp).read() == NEW                       # and was complete when the writer died
    assert _upstream_file.remove_stale_temp_files(str(path), older_than=0) == [temp]
    assert sorted(os.listdir(tmp_path)) == ["marker", "new.txt", "up.conf"]
    _upstream_file.replace_file(str(path), NEW)           # the next writer succeeds
    assert path.read_text() == NEW


# -- one writer at a time (issue 21 item 1, issue 26) ---------------------------------------------------------
def test_the_writer_lock_admits_one_writer_and_is_reentrant(tmp_path):
    path = str(tmp_path / "upstreams.conf")
    first, second = _upstream_file.WriterLock(path), _upstream_file.WriterLock(path, timeout=0.1)
    with first:
        with first:                                          # re-entrant in one object (the watcher's retry)
            with pytest.raises(_upstream_file.LockTimeout):
                with second:
                    pass
        with pytest.raises(_upstream_file.LockTimeout):
            with second:
                pass
    with second:                                             # released by the outer exit only
        pass
    assert oct(stat.S_IMODE(os.stat(tmp_path / ".upstreams.conf.lock").st_mode)) in ("0o644", "0o640", "0o600")


def test_a_watcher_claim_names_its_pid_and_ends_with_it(tmp_path):
    path = str(tmp_path / "upstreams.conf")
    assert _upstream_file.watcher_owner(path) is None
    claim = _upstream_file.WatcherClaim.claim(path)
    assert _upstream_file.WatcherClaim.claim(path) is claim                  # the same process: the same claim
    code = ("import sys; from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file as f\n"
            "print(f.watcher_owner(sys.argv[1]))\n"
            "try:\n    f.WatcherClaim.claim(sys.argv[1])\nexcept f.UpstreamFileBusy as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONPATH=str(COLLECTIONS)))
    owner = f"swallowkeeper-dyups watcher, pid {os.getpid()}"
    busy = f"{owner} already owns the upstream file ({_upstream_file.side_path(path, 'watcher')} is locked)"
    assert done.stdout.splitlines() == [owner, busy]
    del claim
    assert _upstream_file.watcher_owner(path) is None                        # released with the object


def test_the_unsent_record(tmp_path):
    path = str(tmp_path / "upstreams.conf")
    assert _upstream_file.read_unsent(path) == set()
    _upstream_file.write_unsent(path, ["b", "a"])
    assert _upstream_file.read_unsent(path) == {"a", "b"}
    _upstream_file.write_unsent(path, [])
    assert not os.path.exists(_upstream_file.side_path(path, "unsent"))
    with open(_upstream_file.side_path(path, "unsent"), "w", encoding="utf-8") as handle:
        handle.write("[1]")
    with pytest.raises(ValidationError, match="remove it"):
        _upstream_file.read_unsent(path)
