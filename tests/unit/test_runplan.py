"""The saved plan of a warm ``pcocc run`` (pcocc.ctr.runplan): its file is parsed strictly,
and its key misses on any change of what the run was derived from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pcocc.ctr import planexec, planwrite, runplan

ARGV = ["run", "--register-mds=false", "busy", "--", "true"]
UUID = "0123abcd-4567-4890-abcd-ef0123456789"


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A plan for ARGV keyed on a configuration file, an image directory with its revision
    file and a cache entry; ``world.save()`` saves it where load() looks for it (in the test
    itself: pytest changes the environment between a fixture and its test)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    conf = tmp_path / "etc" / "containers.yaml"
    image_dir = tmp_path / "repo" / "meta" / "busy"
    entry = tmp_path / "cache" / "entries" / "dir-1234"
    for d in (conf.parent, image_dir, entry):
        d.mkdir(parents=True)
    conf.write_text("env:\n  A: '1'\n")
    (image_dir / "0.json").write_text("{}")
    (entry / "meta.json").write_text("{}")
    watched = [conf, tmp_path / "etc" / "containers.d", image_dir, image_dir / "0.json",
               entry / "meta.json"]
    return World(tmp_path, conf, image_dir, entry, watched)


class World:
    def __init__(self, tmp_path, conf, image_dir, entry, watched):
        self.tmp_path, self.conf, self.image_dir, self.entry = tmp_path, conf, image_dir, entry
        self.watched = watched

    def save(self, argv=ARGV):
        """Save the plan of ``argv``, and check that it is used as it is."""
        path = save(argv, fields_for(argv, self.watched, self.tmp_path))
        assert runplan.load(argv) is not None
        return path


def fields_for(argv, watched, tmp_path):
    return [
        ("argv", runplan.line_key(argv)),
        ("ids", runplan.ids()),
        ("env", runplan.env_digest(os.environ)),
        ("host", runplan.host()),
        ("image", "busy"),
        *(("stat", f"{p}\0{runplan.stat_sig(str(p))}") for p in watched),
        ("lease", str(tmp_path / "lease")),
        ("touch", str(tmp_path / "touch")),
        ("lower", ""),
        ("pods", str(tmp_path / "pods")),
        ("app", "busy"),
        ("runtime", "crun\0wrap=unified-bind"),
        ("spec", '{"hostname": "pcocc-\0S\0", "root": "/p/\0U\0/rootfs"}'),
        ("cmd", "/usr/bin/crun"),
        ("cmd", "pcocc-\0U\0-busy"),
        ("record", '{"uuid": "\0U\0", "pid": \0pid\0}'),
        ("mds", ""),
    ]


def save(argv, fields):
    path = runplan.plan_path(argv)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path, "wb") as f:
        f.write(runplan.dump(fields))
    os.chmod(path, 0o600)
    return path


def test_a_plan_whose_key_holds_is_loaded(world):
    world.save()
    plan = runplan.load(ARGV)
    assert plan is not None
    assert plan["cmd"] == ["/usr/bin/crun", "pcocc-\0U\0-busy"]
    assert len(plan["stat"]) == 5


def test_a_changed_configuration_file_misses(world):
    world.save()
    world.conf.write_text("env:\n  A: '2'\n")
    assert runplan.load(ARGV) is None


def test_a_configuration_file_touched_back_to_its_old_mtime_misses(world):
    """ctime moves with any change and cannot be set back: mtime alone is not trusted."""
    world.save()
    st = world.conf.stat()
    world.conf.write_text("env:\n  A: '9'\n")  # same size
    os.utime(world.conf, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert runplan.load(ARGV) is None


def test_a_new_drop_in_directory_misses(world):
    world.save()
    (world.tmp_path / "etc" / "containers.d").mkdir()
    assert runplan.load(ARGV) is None


def test_a_new_image_revision_misses(world):
    world.save()
    (world.image_dir / "1.json").write_text("{}")
    assert runplan.load(ARGV) is None


def test_a_deleted_cache_entry_misses(world):
    world.save()
    (world.entry / "meta.json").unlink()
    assert runplan.load(ARGV) is None


def test_another_option_has_no_plan_and_a_swapped_plan_misses(world):
    """Plans are found by command line, and each holds its own: a plan of ``--runtime
    runc`` copied over this one's file does not run for this line."""
    world.save()
    other = [*ARGV[:2], "--runtime", "runc", *ARGV[2:]]
    assert runplan.load(other) is None
    world.save(other)
    os.replace(runplan.plan_path(other), runplan.plan_path(ARGV))
    assert runplan.load(ARGV) is None


def test_a_changed_environment_misses(world, monkeypatch):
    world.save()
    monkeypatch.setenv("PCOCC_SOMETHING", "new")
    assert runplan.load(ARGV) is None


def test_the_timing_variable_does_not_change_the_key(world, monkeypatch):
    world.save()
    monkeypatch.setenv("PCOCC_TIMING", "/dev/null")
    assert runplan.load(ARGV) is not None


def test_an_image_file_of_that_name_in_the_current_directory_misses(world):
    """pcocc run would import such a file instead of running the repository image."""
    world.save()
    (world.tmp_path / "busy").write_text("an image file")
    assert runplan.load(ARGV) is None


def test_a_plan_writable_by_others_or_a_link_is_not_read(world):
    path = world.save()
    assert runplan.load(ARGV) is not None
    os.chmod(path, 0o620)
    assert runplan.load(ARGV) is None
    os.chmod(path, 0o600)
    os.rename(path, path + ".real")
    os.symlink(path + ".real", path)
    assert runplan.load(ARGV) is None


@pytest.mark.parametrize("damage", [
    lambda d: d.replace(b"pcocc-run-plan 1", b"pcocc-run-plan 2"),
    lambda d: d[:-3],  # truncated
    lambda d: d.replace(b"\nlease ", b"\nlurk "),  # unknown tag
    lambda d: d.replace(b"\ntouch ", b"\nlease "),  # a tag twice, one missing
    lambda d: d + b"spec 2\n{}\n",  # a tag twice
    lambda d: d.replace(b"\nimage 4\nbusy\n", b"\nimage 5\nbusy\n"),  # wrong length
])
def test_a_damaged_plan_is_refused(damage):
    data = runplan.dump(fields_for(ARGV, [], Path("/nowhere")))
    assert runplan.parse(data) is not None
    assert runplan.parse(damage(data)) is None


def test_templates_take_a_new_uuid_and_refuse_a_marker_left():
    spec = planwrite._template('{"h": "pcocc-0123abcd", "r": "/p/%s/rootfs"}' % UUID, UUID,
                               "pcocc-0123abcd")
    assert "0123abcd" not in spec
    new = "fedcba98-7654-4321-8765-43210fedcba9"
    assert planexec.render(spec, new, {}) == '{"h": "pcocc-fedcba98", "r": "/p/%s/rootfs"}' % new
    with pytest.raises(ValueError):
        planexec.render('{"pid": \0pid\0}', new, {})
    assert planexec.render('{"pid": \0pid\0}', new, {"pid": "12"}) == '{"pid": 12}'


def test_a_user_hostname_is_kept_as_given():
    spec = planwrite._template('{"h": "pcocc-0123abcd"}', UUID, None)
    assert planexec.render(spec, "fedcba98-7654-4321-8765-43210fedcba9", {}) == \
        '{"h": "pcocc-0123abcd"}'


def test_the_record_template_marks_every_per_run_value():
    from pcocc.ctr.pods import AppRecord, PodRecord

    rec = PodRecord(UUID, state="exited", runtime="crun", hostname="pcocc-0123abcd",
                    pid=1, pid_start=2, started=3.0, exited=4.0,
                    apps=[AppRecord("busy", "busy", ["true"], container_id=f"pcocc-{UUID}-busy",
                                    exit_status=0, pid=5, pid_start=6)])
    text = planwrite._record_template(rec, "pcocc-0123abcd")
    assert "0123abcd" not in text
    values = {"state": '"running"', "pid": "11", "pid_start": "12", "created": "1.5",
              "started": "2.5", "exited": "null", "app_pid": "13", "app_pid_start": "14",
              "exit_status": "null"}
    new = "fedcba98-7654-4321-8765-43210fedcba9"
    import json

    out = PodRecord.from_json(json.loads(planexec.render(text, new, values)), "test")
    assert (out.uuid, out.state, out.pid, out.hostname) == (new, "running", 11, "pcocc-fedcba98")
    assert (out.apps[0].pid, out.apps[0].container_id) == (13, f"pcocc-{new}-busy")



def test_a_plan_of_another_pcocc_installation_misses(world, monkeypatch):
    world.save()
    monkeypatch.setattr(runplan, "PACKAGE_DIR", "/opt/other-pcocc")
    assert runplan.load(ARGV) is None
