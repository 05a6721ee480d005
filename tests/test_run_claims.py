"""Two processes, one --out (issue 22, P0 item 2): exactly one owns the folder, the other fails
at once with one line, and nothing of either is mixed; a dead owner's leftovers are cleaned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import yaml

from longtail import cli
from longtail.runs import create_run

# A first process that claims --out, writes its config and waits for a line on stdin (the
# run is then finished) or is killed; it prints "ready" once it owns the folder.
_OWNER = textwrap.dedent("""
    import sys
    from longtail.runs import create_run
    run = create_run(sys.argv[1], "probe", {"owner": "first"})
    print("ready", flush=True)
    sys.stdin.readline()
    run.finish({"all": 1.0})
""")
_PROBE = ["probe", "--train", "synthetic_features:train", "--test", "synthetic_features:test",
          "method=linear", "loss=ce"]


def _owner(out):
    proc = subprocess.Popen([sys.executable, "-c", _OWNER, str(out)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_second_process_on_the_same_out_fails_at_once_and_nothing_mixes(tmp_path, capsys):
    out = tmp_path / "r"
    owner = _owner(out)
    try:
        rc = cli.main([*_PROBE, "--out", str(out), "--no-report"])
        err = capsys.readouterr().err.strip()
        assert rc == 2
        assert len(err.splitlines()) == 1 and "being written by another running longtail process" in err
        assert f"pid {owner.pid}" in err
        owner.stdin.write("\n")
        owner.stdin.flush()
        assert owner.wait(timeout=60) == 0
    finally:
        owner.kill()
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["owner"] == "first"  # the first run's config with the first run's metrics
    assert (out / "metrics.json").read_text().strip().startswith("{")
    assert "probe" not in config and sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_a_killed_owner_leaves_nothing_that_blocks_the_next_run(tmp_path):
    out = tmp_path / "r"
    owner = _owner(out)
    owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=30)
    assert (tmp_path / ".r.partial").is_dir()  # its staging folder is left behind ...
    assert cli.main([*_PROBE, "--out", str(out), "--no-report"]) == 0  # ... and cleaned by the next owner
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    assert "probe" in yaml.safe_load((out / "config.yaml").read_text())


def test_an_empty_existing_out_is_accepted_before_any_work(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert cli.main([*_PROBE, "--out", str(out), "--no-report"]) == 0
    assert (out / "metrics.json").is_file()


def test_claims_within_one_process_and_after_release(tmp_path):
    run = create_run(tmp_path / "a", "probe", {"x": 1})
    try:
        create_run(tmp_path / "a", "probe", {"x": 2})
    except Exception as err:  # the same process asking twice is refused too
        assert "being written by another" in str(err)
    else:
        raise AssertionError("a claimed folder was claimed twice")
    run.finish({"all": 1.0})
    assert not (tmp_path / ".a.lock").exists()
    assert os.listdir(tmp_path) == ["a"]
