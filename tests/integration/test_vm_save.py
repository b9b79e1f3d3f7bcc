"""``pcocc save`` on a running test VM booted from a repository image (ext2 on /disk in the
guest): the saved revisions hold what the guest wrote before the save, check clean, boot
again, and bad input leaves the repository as it was."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.fixtures.cluster import Env, assert_nothing_left

pytestmark = pytest.mark.slow

#: a guest process that keeps writing to the disk while it is saved (its $ escaped for
#: the double quotes it is passed in)
WRITER = (
    "i=0; while :; do i=$((i+1)); echo $i > /disk/count; echo $i >> /disk/stream; "
    "[ $((i % 20000)) -ne 0 ] || : > /disk/stream; done"
).replace("$", "\\$")


def use_repos(pcocc_env: dict, tmp: Path, *, system: dict | None = None) -> Path:
    user_repo = tmp / "repo"
    (pcocc_env["user"] / "repos.yaml").write_text(
        yaml.safe_dump({"repos": [{"name": "user", "path": str(user_repo)}]}))
    if system is not None:
        (pcocc_env["system"] / "repos.yaml").write_text(
            yaml.safe_dump({"repos": [{"name": n, "path": str(p)} for n, p in system.items()]}))
    return user_repo


def set_image(pcocc_env: dict, image: str) -> None:
    path = pcocc_env["system"] / "templates.yaml"
    config = yaml.safe_load(path.read_text())
    config["templates"]["testvm"]["image"] = image
    path.write_text(yaml.safe_dump(config))


def ok(env: Env, *args: str) -> str:
    res = env.run(*args)
    assert res.returncode == 0, f"pcocc {' '.join(args)}: {res.stderr}"
    return res.stdout


def guest_files(env: Env, image: str, names: list[str]) -> dict[str, str | None]:
    """Export ``image`` as raw, check its file system (e2fsck, read-only, forced) and read
    files from it (None: absent)."""
    raw = env.tmp / f"{image.replace(':', '_').replace('@', '_')}.raw"
    ok(env, "image", "export", "-t", "raw", image, str(raw))
    fsck = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
    assert fsck.returncode == 0, f"{image}: e2fsck: {fsck.stdout}{fsck.stderr}"
    out = {}
    for name in names:
        res = subprocess.run(["debugfs", "-R", f"cat /{name}", str(raw)],
                             capture_output=True, text=True)
        out[name] = res.stdout if "File not found" not in res.stderr else None
    return out


def layers(repo: Path, name: str, rev: int = 0) -> list[str]:
    """The layer digests of a revision, from its metadata file."""
    return json.loads((repo / "meta" / name / f"{rev}.json").read_text())["vm"]["layers"]


def test_save_while_the_guest_writes(local_env, pcocc_env, testvm_artifacts):
    env: Env = local_env
    repo = use_repos(pcocc_env, env.tmp)
    ok(env, "image", "import", str(testvm_artifacts.disk), "user:disk")
    set_image(pcocc_env, "user:disk")
    script = (
        "set -e; "
        "pcocc ssh vm0 'echo before-save > /disk/marker && sync'; "
        f"pcocc ssh vm0 'setsid sh -c \"{WRITER}\" > /dev/null 2>&1 < /dev/null &'; "
        "sleep 1; "
        "PCOCC_TIMING=$PWD/marks pcocc save vm0 > rev.txt; "
        "pcocc save -d user:copy vm0 > copy.txt; "
        "pcocc save --full -d flat vm0 > flat.txt; "
        "pcocc monitor-cmd vm0 query-block > block.json; "
        # (the writer truncates /disk/count before each number: read until one is there)
        "pcocc ssh vm0 'echo after > /disk/after; sync; "
        "n() { v=; while [ -z \"$v\" ]; do v=$(cat /disk/count); done; echo $v; }; "
        "a=$(n); sleep 1; [ $(n) -gt $a ] && echo writing' > writing.txt"
    )
    res = env.run("alloc", "-E", script, "testvm:1")
    assert res.returncode == 0, res.stderr
    assert (env.tmp / "rev.txt").read_text().strip() == "user:disk@1"
    assert (env.tmp / "copy.txt").read_text().strip() == "user:copy@0"
    assert (env.tmp / "flat.txt").read_text().strip() == "user:flat@0"
    assert (env.tmp / "writing.txt").read_text() == "writing\n"  # the guest is not frozen
    # the layer was copied by pcocc from a snapshot merged back: the VM's disk is its
    # overlay again, on the image it booted from
    marks = (env.tmp / "marks").read_text()
    assert "save: snapshot taken" in marks and "save: snapshot merged back" in marks
    (disk,) = [d for d in json.loads((env.tmp / "block.json").read_text())
               if d["device"] == "disk0"]
    assert Path(disk["inserted"]["image"]["filename"]).name == "disk0.qcow2", disk
    assert disk["inserted"]["backing_file_depth"] == 1, disk
    base = layers(repo, "disk", 0)
    assert layers(repo, "disk", 1)[:-1] == base and len(layers(repo, "disk", 1)) == 2
    assert layers(repo, "copy")[:-1] == base
    assert len(layers(repo, "flat")) == 1
    for image in ("user:disk@1", "user:copy", "user:flat"):
        files = guest_files(env, image, ["marker", "after", "etc/os-release", "stream"])
        # the writer's lines as they were at one instant: whole, consecutive numbers
        numbers = [int(n) for n in files["stream"].split()]
        assert numbers, image  # (empty only if saved just as it wrapped: 1 in 20000)
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), image
        assert files["stream"].endswith("\n"), image
        assert files["marker"] == "before-save\n", image
        assert files["after"] is None, image
        assert "pcocc-testvm" in files["etc/os-release"]
    ok(env, "image", "repo", "fsck", "user")
    assert not list((repo / "tmp").iterdir())
    # a new allocation from the saved revision sees the file
    set_image(pcocc_env, "user:disk@1")
    res = env.run("alloc", "-E", "pcocc ssh vm0 cat /disk/marker > seen.txt", "testvm:1")
    assert res.returncode == 0, res.stderr
    assert (env.tmp / "seen.txt").read_text() == "before-save\n"
    assert_nothing_left(env)


def test_bad_input_changes_nothing(local_env, pcocc_env, testvm_artifacts):
    env: Env = local_env
    shared = env.tmp / "shared-repo"
    (pcocc_env["user"] / "repos.yaml").write_text(
        yaml.safe_dump({"repos": [{"name": "global", "path": str(shared)}]}))
    ok(env, "image", "import", str(testvm_artifacts.disk), "global:disk")
    repo = use_repos(pcocc_env, env.tmp, system={"global": shared})  # now read-only
    set_image(pcocc_env, "global:disk")

    def attempt(name: str, args: str) -> str:
        return f"pcocc save {args} > {name}.out 2> {name}.err; echo $? > {name}.rc; "

    script = (
        attempt("readonly", "vm0")
        + attempt("unknown", "vm5")
        + attempt("taken", "-d global:other vm0")
        + "pcocc ssh vm0 'killall qemu-ga; sleep 0.5'; "
        + attempt("noagent", "-d mine vm0")
        + attempt("skip", "-s -d mine vm0")
    )
    res = env.run("alloc", "-E", script, "testvm:1")
    assert res.returncode == 0, res.stderr

    def result(name: str) -> tuple[int, str]:
        err = (env.tmp / f"{name}.err").read_text()
        return int((env.tmp / f"{name}.rc").read_text()), err

    for name, status, words in [
        ("readonly", 1, "repository 'global' is read-only for you"),
        ("unknown", 1, "vm5"),
        ("taken", 1, "read-only"),
        ("noagent", 1, "guest agent of vm0 does not answer"),
    ]:
        rc, err = result(name)
        assert rc == status, (name, err)
        assert words in err and "Traceback" not in err, (name, err)
        assert len([ln for ln in err.splitlines() if ln.startswith("pcocc: error")]) == 1
    assert result("skip")[0] == 0, result("skip")[1]
    assert (env.tmp / "skip.out").read_text().strip() == "user:mine@0"
    # nothing of the refused saves: one image, no revision added, no staging left
    listed = {m["name"]: m for m in json.loads(ok(env, "image", "list", "--json"))}
    assert sorted(listed) == ["disk", "mine"]
    assert layers(shared, "disk") == layers(repo, "mine")[:-1]
    assert not (shared / "meta" / "disk" / "1.json").exists()
    assert not list((repo / "tmp").iterdir())
    assert_nothing_left(env)
