"""``pcocc run -N/-n``: one container per task, on the dev Slurm cluster (n1..n4, one host)
and with the local batch manager."""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.containers.ctrlib import pcocc

NODES = ["n1", "n2", "n3", "n4"]




def _lines(text: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line)


@pytest.mark.slow
def test_four_nodes_from_outside_an_allocation(slurm, pcocc_bin):
    # pcocc allocates 4 nodes (salloc) and runs one container per node; each pod is named
    # after its Slurm node
    res = pcocc(pcocc_bin, "run", "-N", "4", "busy", "--", "hostname", check=0)
    assert _lines(res.stdout) == NODES


@pytest.mark.slow
def test_inside_an_allocation_with_the_slurm_environment(slurm, pcocc_bin):
    res = subprocess.run(
        ["salloc", "-N", "4", "-n", "4", "--", pcocc_bin, "run", "-N", "4", "--inherit-env",
         "busy", "--", "sh", "-c", "echo $SLURMD_NODENAME $SLURM_PROCID"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    pairs = sorted(line.split() for line in res.stdout.splitlines() if line)
    assert [p[0] for p in pairs] == NODES
    assert sorted(p[1] for p in pairs) == ["0", "1", "2", "3"]


@pytest.mark.slow
def test_one_failing_task_fails_the_run(slurm, pcocc_bin):
    res = pcocc(pcocc_bin, "run", "-N", "4", "busy", "--", "sh", "-c", 'test "$(hostname)" != n3')
    assert res.returncode != 0, (res.stdout, res.stderr)


@pytest.mark.slow
def test_whiteouts_on_every_node(slurm, pcocc_bin, multilayer_image):
    pcocc(pcocc_bin, "image", "import", multilayer_image.ref, "multi", check=0)
    checks = " && ".join(f"test ! -e /{p}" for p in multilayer_image.absent)
    res = pcocc(
        pcocc_bin, "run", "-N", "2", "-n", "4", "multi", "--", "sh", "-c",
        f"{checks} && cat /data/new", check=0,
    )  # fmt: skip
    assert res.stdout == "new\n" * 4


def test_local_batch_manager_runs_every_task(
    pcocc_env,
    runtime_dir,
    monkeypatch,
    pcocc_bin,
    busybox_image,
    tmp_path,
):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    (pcocc_env["system"] / "batch.yaml").write_text(
        f"type: local\nlocal:\n  state-dir: {tmp_path / 'jobs'}\n"
    )
    pcocc(pcocc_bin, "image", "import", busybox_image.ref, "busy", check=0)
    res = pcocc(pcocc_bin, "run", "-n", "3", "--inherit-env", "busy", "--", "sh", "-c",
                 "echo task $PCOCC_TASK_RANK", check=0)  # fmt: skip
    assert _lines(res.stdout) == ["task 0", "task 1", "task 2"]
    failing = pcocc(pcocc_bin, "run", "-n", "2", "busy", "--", "sh", "-c", "exit 3")
    assert failing.returncode == 3
