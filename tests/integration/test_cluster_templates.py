"""Template settings on real clusters of the test VM: run-time placeholders in custom-args,
persistent drives, disk-model and full-node."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from tests.fixtures.cluster import Env, _endpoints, assert_nothing_left

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


def set_template(pcocc_env: dict, **settings) -> None:
    """Add ``settings`` to the testvm template of the test's system configuration."""
    path = pcocc_env["system"] / "templates.yaml"
    config = yaml.safe_load(path.read_text())
    config["templates"]["testvm"].update(settings)
    path.write_text(yaml.safe_dump(config))


def no_jobs(env: Env) -> bool:
    jobs = env.tmp / "home" / ".pcocc" / "local-jobs"
    return not jobs.exists() or not any(jobs.iterdir())


def test_placeholders_and_persistent_drives(local_env, pcocc_env):
    env: Env = local_env
    for rank in (0, 1):
        with open(env.tmp / f"data-{rank}.raw", "wb") as f:
            f.truncate(MIB)
    shared_raw = env.tmp / "shared.src"
    shared_raw.write_bytes(b"shared-bytes".ljust(MIB, b"\0"))
    shared = env.tmp / "shared.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", shared_raw, shared],
                   check=True)
    set_template(
        pcocc_env,
        **{
            "custom-args": ["-pidfile", "%{clusterdir}/vm%{vm_rank}.pid"],
            "persistent-drives": [
                f"{env.tmp}/data-%{{vm_rank}}.raw",
                {"path": str(shared), "readonly": True, "cache": "none"},
            ],
        },
    )
    # No boot disk: vda is data-<rank>.raw, vdb the shared qcow2, the seed comes last.
    guest = (
        "printf \"$(hostname)-wrote-this\" | dd of=/dev/vda conv=notrunc 2>/dev/null; sync;"
        " dd if=/dev/vdb bs=12 count=1 2>/dev/null; echo; cat /sys/block/vdb/ro"
    )
    script = (
        "set -e; d=\"$PCOCC_RUN_DIR/$PCOCC_JOB_ID\"; "
        "for r in 0 1; do tr '\\0' ' ' < /proc/$(cat $d/vm$r.pid)/cmdline > qemu$r.cmd; "
        f"pcocc ssh vm$r '{guest}' > guest$r.txt; done; echo \"$d\" > clusterdir.txt"
    )
    res = env.run("alloc", "-E", script, "testvm:2")
    assert res.returncode == 0, res.stderr
    clusterdir = (env.tmp / "clusterdir.txt").read_text().strip()
    for rank in (0, 1):
        cmd = (env.tmp / f"qemu{rank}.cmd").read_text()
        assert "qemu-system" in cmd and f"-pidfile {clusterdir}/vm{rank}.pid" in cmd
        assert f"file={env.tmp}/data-{rank}.raw,format=raw" in cmd
        assert f"file={shared},format=qcow2" in cmd and "readonly=on" in cmd
        assert (env.tmp / f"guest{rank}.txt").read_text().split() == ["shared-bytes", "1"]
        written = (env.tmp / f"data-{rank}.raw").read_bytes()
        assert written[:15] == f"vm{rank}-wrote-this\0".encode()
        assert len(written) == MIB
    assert shared.exists()
    assert_nothing_left(env)


def test_rank_placeholders_in_mount_points_and_user_data(local_env, pcocc_env):
    from pcocc.vm import virtiofs

    try:
        virtiofs.find_virtiofsd()
    except Exception as err:  # noqa: BLE001 - skip with the reason
        pytest.skip(str(err))
    env: Env = local_env
    for rank in (0, 1):
        (env.tmp / f"share-{rank}").mkdir()
        (env.tmp / f"share-{rank}" / "who").write_text(f"share of vm{rank}\n")
        (env.tmp / f"ud-{rank}.sh").write_text(f"#!/bin/sh\necho user-data {rank} > /tmp/ud\n")
    set_template(
        pcocc_env,
        **{
            "mount-points": {"data": {"path": f"{env.tmp}/share-%{{vm_rank}}"}},
            "user-data": f"{env.tmp}/ud-%{{vm_rank}}.sh",
        },
    )
    guest = (
        "for i in $(seq 100); do [ -f /tmp/ud ] && break; sleep 0.2; done; cat /tmp/ud; "
        "mkdir -p /d; mount -t virtiofs data /d; cat /d/who"
    )
    script = f"set -e; for r in 0 1; do pcocc ssh vm$r '{guest}' > out$r.txt; done"
    res = env.run("alloc", "-E", script, "testvm:2")
    assert res.returncode == 0, res.stderr
    for rank in (0, 1):
        assert (env.tmp / f"out{rank}.txt").read_text() == (
            f"user-data {rank}\nshare of vm{rank}\n"
        )
    assert_nothing_left(env)


def test_bad_template_settings_fail_before_allocation(local_env, pcocc_env):
    env: Env = local_env
    missing = env.tmp / "missing.qcow2"
    set_template(pcocc_env, **{"persistent-drives": [str(missing)]})
    res = env.run("alloc", "-E", "true", "testvm:1")
    assert res.returncode == 2, res.stderr
    assert f"pcocc: error: template 'testvm': persistent drive '{missing}': no such file" in (
        res.stderr
    )
    assert f"qemu-img create -f qcow2 {missing} SIZE" in res.stderr

    shared = env.tmp / "shared.raw"
    shared.write_bytes(b"\0" * 4096)
    set_template(pcocc_env, **{"persistent-drives": [str(shared)]})
    res = env.run("alloc", "-E", "true", "testvm:2")
    assert res.returncode == 2, res.stderr
    assert (
        f"persistent drive '{shared}' would be written by more than one VM: vm0 (testvm),"
        " vm1 (testvm)" in res.stderr
    )

    fake = env.tmp / "fake.qcow2"  # raw bytes named as qcow2: real qemu-img probe
    fake.write_bytes(b"\0" * 4096)
    set_template(pcocc_env, **{"persistent-drives": [str(fake)]})
    res = env.run("alloc", "-E", "true", "testvm:1")
    assert res.returncode == 2 and "not a qcow2 image (qemu-img sees raw)" in res.stderr

    set_template(pcocc_env, **{"persistent-drives": [], "full-node": True})
    res = env.run("alloc", "-E", "true", "testvm:2")
    assert res.returncode == 2
    assert "template 'testvm' sets full-node, but without Slurm" in res.stderr
    assert "Traceback" not in res.stderr
    assert no_jobs(env)


#: Drivers the guest loads (in this order) to see its boot disk, per disk model.
DISK_DRIVERS = {
    "virtio-scsi": ["scsi_common", "scsi_mod", "sd_mod", "virtio_scsi"],
    "ide": ["scsi_common", "scsi_mod", "sd_mod", "libata", "ata_piix"],
}


def driver_iso(dest, artifacts, names: list[str]):
    """An iso9660 image holding the kernel modules ``names`` of the test VM's kernel."""
    manifest = json.loads((artifacts.directory / "manifest.json").read_text())
    version = manifest["kernel_version"]
    moddir = Path("/lib/modules") / version
    staging = dest.with_suffix(".d")
    staging.mkdir()
    for name in names:
        found = list(moddir.rglob(f"{name}.ko"))
        if not found:
            pytest.skip(f"no module {name}.ko for kernel {version}")
        shutil.copy(found[0], staging / f"{name}.ko")
    subprocess.run(["genisoimage", "-quiet", "-r", "-o", dest, staging], check=True)
    return dest


@pytest.mark.parametrize("model", ["virtio-scsi", "ide"])
def test_disk_model_attaches_the_boot_disk(
    local_env, pcocc_env, testvm_artifacts, model
):
    """The boot disk (the image's overlay) on the chosen bus, as QEMU reports it and as the
    guest sees it once it loads the drivers (from an iso attached as a persistent drive:
    the test VM's initramfs has no SCSI or ATA driver)."""
    env: Env = local_env
    repo = env.tmp / "repo"
    (pcocc_env["user"] / "repos.yaml").write_text(
        yaml.safe_dump({"repos": [{"name": "user", "path": str(repo)}]})
    )
    res = env.run("image", "import", str(testvm_artifacts.disk), "user:disk")
    assert res.returncode == 0, res.stderr
    drivers = DISK_DRIVERS[model]
    iso = driver_iso(env.tmp / "drivers.iso", testvm_artifacts, drivers)
    set_template(
        pcocc_env,
        image="user:disk",
        **{
            "disk-model": model,
            "persistent-drives": [{"path": str(iso), "format": "raw", "readonly": True}],
        },
    )
    # vda: the drivers (the boot disk is not virtio-blk), vdb: the seed. The ext2 magic
    # (53 ef at byte 1080) of the image on the first SCSI disk proves the guest reads it.
    guest = (
        "mkdir -p /drv; mount -t iso9660 -o ro /dev/vda /drv; "
        + "".join(f"insmod /drv/{name}.ko; " for name in drivers)
        + "for i in $(seq 100); do [ -b /dev/sda ] && break; sleep 0.2; done; "
        "dd if=/dev/sda bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1"
    )
    script = (
        "set -e; pcocc monitor-cmd vm0 info qtree > qtree.txt; "
        f"pcocc ssh vm0 '{guest}' > magic.txt"
    )
    res = env.run("alloc", "-E", script, "testvm:1")
    assert res.returncode == 0, res.stderr
    qtree = (env.tmp / "qtree.txt").read_text()
    if model == "virtio-scsi":
        assert "dev: scsi-hd" in qtree and "bus: scsi0.0" in qtree
        assert 'drive = "disk0"' in qtree
    else:
        assert "dev: ide-hd" in qtree and 'drive = "disk0"' in qtree
    assert (env.tmp / "magic.txt").read_text().split() == ["53", "ef"]
    assert_nothing_left(env)


def test_full_node_gives_each_vm_a_whole_node(slurm_test_env, pcocc_env):
    env: Env = slurm_test_env
    set_template(pcocc_env, **{"full-node": True})
    script = (
        "set -e; pcocc ps --json > ps.json; "
        "for r in 0 1; do pcocc ssh vm$r 'grep -c ^processor /proc/cpuinfo' > cpus$r.txt; done; "
        "squeue -h -j $PCOCC_JOB_ID -o '%D %C' > squeue.txt; "
        # nodes of each step of the job (the VMs' srun is one of them)
        "for n in $(squeue -h -s -j $PCOCC_JOB_ID -o '%N'); do "
        "scontrol show hostnames $n | wc -l; done > steps.txt"
    )
    res = env.run("alloc", "-E", script, "testvm:2")
    assert res.returncode == 0, res.stderr
    nodes, cpus = (env.tmp / "squeue.txt").read_text().split()
    assert int(nodes) == 2
    per_node = int(cpus) // 2
    assert per_node > 1  # the template's resource set asks for one core
    for rank in (0, 1):
        assert int((env.tmp / f"cpus{rank}.txt").read_text()) == per_node
    assert "2" in (env.tmp / "steps.txt").read_text().split()
    assert_nothing_left(env, _endpoints(env))
