"""``pcocc pod export`` refuses before writing anything: running pods, unknown or ambiguous
UUIDs, apps without a layer or base image; crun's private namespace mounts the root layer;
the new image's manifest and config add exactly one layer."""

from __future__ import annotations

import os
import time

import pytest

from pcocc.ctr import host
from pcocc.ctr.podexport import export_pod
from pcocc.ctr.pods import AppRecord, PodRecord, PodStore, process_start_ticks
from pcocc.ctr.rootlayer import RootLayer, with_root_layer
from pcocc.ctr.runtimes.oci import ROOT_OVERLAY_ANNOTATION, Crun
from pcocc.errors import NotFound, PcoccError, UsageError
from pcocc.repo.ocispec import stack_layer


class NoRepos:
    """Repositories that must not be reached."""

    def __getattr__(self, name):
        raise AssertionError(f"the repositories were used ({name}) before the checks")


def _pod(store: PodStore, uuid: str, **kw) -> PodRecord:
    apps = kw.pop("apps", None) or [AppRecord("busy", "busy", [], image_ref="r:img@0", layer=True)]
    rec = PodRecord(uuid=uuid, boot_id=host.boot_id(), apps=apps, **kw)
    store.pod_dir(uuid).mkdir(parents=True)
    store.save(rec)
    return rec


@pytest.fixture
def store(tmp_path) -> PodStore:
    return PodStore(tmp_path / "pods")


EXITED = {"state": "exited", "started": 1.0, "exited": 2.0}


def test_a_running_pod_is_refused(store):
    me = os.getpid()
    _pod(store, "aaaa0000-1", state="running", pid=me, pid_start=process_start_ticks(me),
         started=time.time())
    with pytest.raises(PcoccError, match="is running") as err:
        export_pod(store, NoRepos(), "aaaa", "saved")
    assert "pcocc pod stop" in (err.value.hint or "")


def test_a_pod_whose_app_runtime_still_runs_is_refused(store):
    me = os.getpid()
    app = AppRecord("busy", "busy", [], pid=me, pid_start=process_start_ticks(me),
                    image_ref="r:img@0", layer=True)
    _pod(store, "aaaa0000-1", apps=[app], **EXITED)  # supervisor gone, runtime left
    with pytest.raises(PcoccError, match="is running"):
        export_pod(store, NoRepos(), "aaaa", "saved")


def test_unknown_and_ambiguous_uuids(store):
    _pod(store, "abcd0000-1", **EXITED)
    _pod(store, "abcd0000-2", **EXITED)
    with pytest.raises(NotFound, match="no pod with UUID 'ffff'"):
        export_pod(store, NoRepos(), "ffff", "saved")
    with pytest.raises(UsageError, match="ambiguous.*abcd0000-1.*abcd0000-2"):
        export_pod(store, NoRepos(), "abcd", "saved")


def test_a_pod_never_started_is_refused(store):
    _pod(store, "aaaa0000-1")
    with pytest.raises(PcoccError, match="never started"):
        export_pod(store, NoRepos(), "aaaa", "saved")


def test_app_choice_and_apps_without_layer_or_image(store):
    apps = [AppRecord("one", "img", [], image_ref="r:img@0", layer=True),
            AppRecord("two", "./dir", [], layer=True),
            AppRecord("vm", "img", [], image_ref="r:img@0")]
    _pod(store, "aaaa0000-1", apps=apps, **EXITED)
    with pytest.raises(UsageError, match="3 apps") as err:
        export_pod(store, NoRepos(), "aaaa", "saved")
    assert "one, two, vm" in (err.value.hint or "")
    with pytest.raises(NotFound, match="no app 'nope'"):
        export_pod(store, NoRepos(), "aaaa", "saved", app_name="nope")
    with pytest.raises(PcoccError, match="directory ./dir"):
        export_pod(store, NoRepos(), "aaaa", "saved", app_name="two")
    with pytest.raises(PcoccError, match="read-only root"):
        export_pod(store, NoRepos(), "aaaa", "saved", app_name="vm")


def test_root_layer_dirs_are_private_and_the_root_keeps_its_mode(tmp_path):
    lower = tmp_path / "lower"
    lower.mkdir(mode=0o755)
    os.chmod(lower, 0o755)
    layer = RootLayer(tmp_path / "app")
    (tmp_path / "app").mkdir()
    layer.create(lower)
    assert layer.top.stat().st_mode & 0o777 == 0o700
    assert layer.upper.stat().st_mode & 0o7777 == 0o755
    spec = with_root_layer({"root": {"path": str(layer.merged)}, "mounts": [{"x": 1}]},
                           layer, str(lower))
    first = spec["mounts"][0]
    assert first["destination"] == "/" and first["type"] == "overlay"
    assert f"lowerdir={lower}" in first["options"] and "userxattr" in first["options"]


def _overlay_spec(tmp_path):
    layer = RootLayer(tmp_path / "app,x")
    spec = {"root": {"path": str(layer.merged)}, "mounts": [], "linux": {}}
    return with_root_layer(spec, layer, str(tmp_path / "low:er"))


def test_crun_mounts_the_root_layer_in_its_private_namespace(tmp_path, monkeypatch):
    monkeypatch.setattr(host, "is_rootless", lambda: False)
    spec = Crun({}).adapt_spec(_overlay_spec(tmp_path))
    assert spec["mounts"] == []  # crun 1.8 cannot mount on /
    opts = spec["annotations"][ROOT_OVERLAY_ANNOTATION]
    assert "userxattr" not in opts  # mounted by real root, outside any user namespace
    assert "app\\,x" in opts and "low\\:er" in opts
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(__import__("json").dumps(spec))
    argv = Crun({}).run_argv(bundle, "c1")
    script = argv[argv.index("-c") + 1]
    assert "mount -t overlay" in script and argv[argv.index("pcocc-wrap") + 1] == opts
    assert argv[argv.index("pcocc-wrap") + 2] == spec["root"]["path"]
    assert "--user" not in argv
    wrapped = Crun({"wrap": "unified-bind"}).run_argv(bundle, "c1")
    assert "mount --bind" in wrapped[wrapped.index("-c") + 1]


def test_crun_rootless_has_a_layer_only_inside_its_cgroup_wrapper(monkeypatch):
    monkeypatch.setattr(host, "is_rootless", lambda: True)
    assert not Crun({}).supports_root_layer()
    assert Crun({"wrap": "unified-bind"}).supports_root_layer()
    monkeypatch.setattr(host, "is_rootless", lambda: False)
    assert Crun({}).supports_root_layer()


def test_stack_layer_adds_one_layer_and_diff_id():
    manifest = {"schemaVersion": 2, "config": {"digest": "c"}, "layers": [{"digest": "l0"}]}
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"diff_ids": ["d0"]},
              "history": [{"created_by": "base"}], "config": {"Cmd": ["/bin/sh"]}}
    m2, c2 = stack_layer(manifest, config, {"digest": "l1"}, "d1", created="T", created_by="x")
    assert [layer["digest"] for layer in m2["layers"]] == ["l0", "l1"]
    assert c2["rootfs"]["diff_ids"] == ["d0", "d1"] and c2["created"] == "T"
    assert c2["history"][-1] == {"created": "T", "created_by": "x"}
    assert c2["config"] == {"Cmd": ["/bin/sh"]}
    assert manifest["layers"] == [{"digest": "l0"}] and config["rootfs"]["diff_ids"] == ["d0"]
