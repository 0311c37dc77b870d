"""Tests for experiments.workdir: one run per workdir, stale temporaries removed."""

import os
import subprocess
import sys
import time

import pytest

from experiments import workdir


def test_a_second_claim_is_refused_with_the_holders_pid(tmp_path):
    with workdir.claim(str(tmp_path)):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        # Another open file description of the same lock: as another process would see it.
        with pytest.raises(workdir.WorkdirInUseError, match=f"in use by pid {os.getpid()}"):
            with workdir.claim(str(tmp_path)):
                pass
    with workdir.claim(str(tmp_path)):  # released when the block ends
        pass


def test_a_killed_holder_leaves_the_workdir_free(tmp_path):
    code = ("import sys, time; from experiments import workdir\n"
            "with workdir.claim(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(workdir.WorkdirInUseError, match=f"pid {holder.pid}"):
            with workdir.claim(str(tmp_path)):
                pass
    finally:
        holder.kill()
        holder.wait()
    deadline = time.time() + 10
    while True:  # kill -9: the kernel drops the flock with the process
        try:
            with workdir.claim(str(tmp_path)):
                break
        except workdir.WorkdirInUseError:
            assert time.time() < deadline
            time.sleep(0.05)


def test_stale_temporaries_are_removed_on_claim(tmp_path):
    (tmp_path / "seed0").mkdir()
    for name in (".tmp-abcresults.json", "seed0/.tmp-xyzwindow.npz"):
        (tmp_path / name).write_text("half")
    (tmp_path / "results.json").write_text("{}")
    with workdir.claim(str(tmp_path)):
        pass
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [".lock", "results.json"]


def test_a_summarize_only_reader_is_refused_while_a_run_holds_the_workdir(tmp_path):
    workdir.refuse_if_in_use(str(tmp_path / "absent"))  # nothing to refuse, nothing created
    assert not (tmp_path / "absent").exists()
    with workdir.claim(str(tmp_path)):
        with pytest.raises(workdir.WorkdirInUseError, match=f"in use by pid {os.getpid()}"):
            workdir.refuse_if_in_use(str(tmp_path))
    workdir.refuse_if_in_use(str(tmp_path))  # free again
