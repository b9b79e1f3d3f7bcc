"""``pcocc run`` from images of the repositories, image files and a registry, through the
container cache (real skopeo, umoci, docker-registry, crun/runc, squashfuse)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import testimages
from tests.integration.containers.ctrlib import pcocc


def cache_entries(env) -> list[dict]:
    entries = Path(env["home"]) / ".cache" / "pcocc" / "entries"
    if not entries.is_dir():
        return []
    return [json.loads((d / "meta.json").read_text()) for d in sorted(entries.iterdir())]


@pytest.fixture
def busy(env, pcocc_bin, busybox_image):
    """The test busybox image imported as user:busy."""
    pcocc(pcocc_bin, "image", "import", busybox_image.ref, "user:busy", check=0)
    return "busy"


def test_cold_then_warm_start_from_a_repo_image(env, pcocc_bin, busy):
    assert cache_entries(env) == []
    cold = pcocc(pcocc_bin, "run", "user:busy", "--", "cat", "/etc/hello", check=0)
    assert cold.stdout == "hello from pcocc\n"
    assert "preparing user:busy@0 in the container cache" in cold.stderr
    [entry] = cache_entries(env)
    assert entry["mode"] == "dir"

    warm = pcocc(pcocc_bin, "run", busy, "--", "sh", "-c", "echo $PCOCC_TEST; pwd", check=0)
    assert warm.stdout == "busybox\n/\n"  # Env and WorkingDir of the stored OCI config
    assert "preparing" not in warm.stderr
    assert cache_entries(env) == [entry]  # same entry, same creation time: not rebuilt


def test_image_config_cmd_is_the_default_command(env, pcocc_bin, busy):
    # Cmd of the test image is /bin/sh: with stdin closed it reads nothing and exits 0
    res = pcocc(pcocc_bin, "run", busy, check=0)
    assert res.stdout == ""


def test_run_by_image_id_prefix(env, pcocc_bin, busy):
    listing = json.loads(pcocc(pcocc_bin, "image", "list", "--json", check=0).stdout)
    [image] = [i for i in listing if i["name"] == "busy"]
    prefix = image["id"][: len("sha256-") + 10]
    res = pcocc(pcocc_bin, "run", prefix, "--", "cat", "/etc/hello", check=0)
    assert res.stdout == "hello from pcocc\n"


def test_whiteouts_of_a_multilayer_image(env, pcocc_bin, multilayer_image):
    pcocc(pcocc_bin, "image", "import", multilayer_image.ref, "multi", check=0)
    script = "; ".join(f"test -e /{p} && echo present /{p}" for p in multilayer_image.absent)
    res = pcocc(pcocc_bin, "run", "multi", "--", "sh", "-c", f"{script}; cat /data/new", check=0)
    assert "present" not in res.stdout
    assert res.stdout == multilayer_image.expected["data/new"].decode()


def test_oci_archive_file_is_imported_once(env, pcocc_bin, busybox_image, tmp_path):
    archive = tmp_path / "busybox.tar"
    testimages.convert(busybox_image, "oci-archive", str(archive))
    first = pcocc(pcocc_bin, "run", archive, "--", "cat", "/etc/hello", check=0)
    assert first.stdout == "hello from pcocc\n"
    assert "importing" in first.stderr
    names = [i["name"] for i in json.loads(pcocc(pcocc_bin, "image", "list", "--json").stdout)]
    assert len(names) == 1 and names[0].startswith("run-busybox.tar-")
    again = pcocc(pcocc_bin, "run", f"oci-archive:{archive}", "--", "true", check=0)
    assert "importing" not in again.stderr and "preparing" not in again.stderr


def test_docker_reference_on_the_local_registry(env, pcocc_bin, busybox_image, registry):
    location = registry.ref("pcocc/run-busybox", "1")
    testimages.convert(busybox_image, "docker", location, tls_verify=False)
    # a plain-HTTP registry is declared insecure where skopeo looks for it (registries.conf)
    conf = env["home"] / ".config" / "containers" / "registries.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    ref = f"docker://{location}"
    first = pcocc(pcocc_bin, "run", ref, "--", "cat", "/etc/hello", check=0)
    assert first.stdout == "hello from pcocc\n" and "importing" in first.stderr
    again = pcocc(pcocc_bin, "run", ref, "--", "cat", "/etc/hello", check=0)
    assert "importing" not in again.stderr and "preparing" not in again.stderr


@pytest.mark.slow
def test_four_concurrent_first_starts_share_one_preparation(env, pcocc_bin, busy):
    children = [
        subprocess.Popen(
            [pcocc_bin, "run", busy, "--", "cat", "/etc/hello"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [(c.communicate(timeout=120), c.returncode) for c in children]
    assert [r[1] for r in results] == [0, 0, 0, 0], results
    assert [r[0][0] for r in results] == ["hello from pcocc\n"] * 4
    assert sum("preparing" in r[0][1] for r in results) == 1, results
    assert len(cache_entries(env)) == 1
    tmp = Path(env["home"]) / ".cache" / "pcocc" / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def test_squashfs_cache_is_mounted_for_the_pod(env, pcocc_bin, busy, runtime_dir):
    if shutil.which("squashfuse") is None or shutil.which("mksquashfs") is None:
        pytest.skip("squashfuse or squashfs-tools not installed")
    cache = Path(env["home"]) / "sq-cache"
    (env["user"] / "repos.yaml").write_text(f"cache:\n  path: {cache}\n  mode: squashfs\n")
    res = pcocc(pcocc_bin, "run", busy, "--", "cat", "/etc/hello", check=0)
    assert res.stdout == "hello from pcocc\n"
    if "using an unpacked directory" in res.stderr:
        pytest.skip(f"FUSE not usable here: {res.stderr.strip()}")
    assert [d.name.split("-")[0] for d in (cache / "entries").iterdir()] == ["squashfs"]
    mnt = runtime_dir / "pcocc" / "mnt"
    assert list(mnt.iterdir()) == []  # unmounted and removed at the end of the pod
    with open("/proc/mounts") as f:
        assert str(mnt) not in f.read()

    # the mounts of a killed pcocc are cleaned by the next squashfs run
    dead = subprocess.Popen(["true"])
    dead.wait()
    [squashfs] = (cache / "entries").glob("squashfs-*/rootfs.squashfs")
    left = mnt / f"{dead.pid}-0000"
    (left / "lower").mkdir(parents=True)
    subprocess.run(["squashfuse", squashfs, left / "lower"], check=True)
    pcocc(pcocc_bin, "run", busy, "--", "true", check=0)
    assert not left.exists()
    with open("/proc/mounts") as f:
        assert str(left) not in f.read()


def test_unknown_and_malformed_images(env, pcocc_bin):
    res = pcocc(pcocc_bin, "run", "nope", "--", "true", check=1)
    assert "image 'nope' not found" in res.stderr and "Traceback" not in res.stderr
    res = pcocc(pcocc_bin, "run", "./missing.sif", "--", "true", check=1)
    assert "image './missing.sif' not found: no such file or directory" in res.stderr
    res = pcocc(pcocc_bin, "run", "bad name!", "--", "true", check=2)
    assert "neither a directory, an image file nor an image name" in res.stderr
    res = pcocc(pcocc_bin, "run", "sha256-zz", "--", "true", check=2)
    assert "invalid image ID" in res.stderr
    res = pcocc(pcocc_bin, "run", "sha256-0123", "--", "true", check=1)
    assert "no image has an ID starting with sha256-0123" in res.stderr
    res = pcocc(pcocc_bin, "run", "elsewhere:busy", "--", "true", check=1)
    assert "repository 'elsewhere' is not configured" in res.stderr


def test_a_vm_image_is_refused(env, pcocc_bin, tmp_path):
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "1M"], check=True)
    pcocc(pcocc_bin, "image", "import", disk, "vmimg", check=0)
    res = pcocc(pcocc_bin, "run", "vmimg", "--", "true", check=2)
    assert "is a VM image, not a container image" in res.stderr


def test_a_tarball_that_is_no_image(env, pcocc_bin, tmp_path):
    import tarfile

    bogus = tmp_path / "bogus.tar"
    with tarfile.open(bogus, "w") as tar:
        tar.add(__file__, arcname="hello.py")
    res = pcocc(pcocc_bin, "run", bogus, "--", "true", check=2)
    assert "neither an oci-archive nor a docker-archive" in res.stderr
