"""pcocc 0.7's command lines: Slurm options anywhere on alloc/batch, -J names and selects a
cluster, batch -E FILE, ssh/scp options passed as argv words, --user, ps -a/-u."""

from __future__ import annotations

import base64
import getpass
import re

import pytest

from pcocc.batch.base import JobInfo
from pcocc.batch.slurm import parse_squeue, squeue_argv
from pcocc.cli.main import run_cli
from pcocc.cluster import jobs
from pcocc.cluster.lookup import clusters_of, select_cluster
from pcocc.cluster.record import ClusterRecord
from pcocc.errors import NotFound, UsageError
from pcocc.kv import keys

from tests.fixtures.memkv import MemoryKv
from tests.unit.test_cluster_lookup import USER, add_cluster


@pytest.fixture
def submitted(monkeypatch, pcocc_env):
    """alloc/batch up to the batch system: what reaches it."""
    seen = {}
    monkeypatch.setattr(jobs, "prepare_definition", lambda config, spec, **kw: ("def", spec))

    def fake_alloc(config, definition, batch_args, command, *, log_args=(), restore=None,
                   job_name=None):
        seen.update(definition=definition, batch_args=tuple(batch_args), command=command,
                    job_name=job_name)
        return 0

    def fake_submit(config, definition, batch_args, command, log_args=(), restore=None,
                    job_name=None):
        fake_alloc(config, definition, batch_args, command, job_name=job_name)
        return "42"

    monkeypatch.setattr(jobs, "alloc", fake_alloc)
    monkeypatch.setattr(jobs, "submit", fake_submit)
    return seen


@pytest.mark.parametrize(("argv", "spec", "batch_args", "name"), [
    (["alloc", "-p", "debug", "-N", "2", "-t", "30", "tpl:2"], "tpl:2",
     ("-p", "debug", "-N", "2", "-t", "30"), None),
    (["alloc", "-c", "4", "--qos=test", "-J", "ubuntu", "tpl1:6,tpl2:2"], "tpl1:6,tpl2:2",
     ("--qos=test",), "ubuntu"),
    (["batch", "-p", "debug", "--qos", "normal", "tpl:4"], "tpl:4",
     ("-p", "debug", "--qos", "normal"), None),
    (["batch", "tpl:4", "-t", "10", "--job-name=web", "--", "--exclusive"], "tpl:4",
     ("-t", "10", "--exclusive"), "web"),
    (["alloc", "tpl:1", "--", "-p", "debug"], "tpl:1", ("-p", "debug"), None),
])
def test_slurm_options_before_and_after_the_definition(submitted, argv, spec, batch_args, name):
    assert run_cli(argv) == 0
    assert submitted["definition"] == ("def", spec)
    assert submitted["batch_args"] == batch_args
    assert submitted["job_name"] == name


def test_an_option_nobody_knows_reaches_slurm(submitted):
    assert run_cli(["alloc", "--no-such-option", "tpl:1"]) == 0
    assert submitted["batch_args"] == ("--no-such-option",)


def test_an_unknown_option_with_a_separate_value_is_explained(submitted, capsys):
    assert run_cli(["alloc", "--new-slurm-option", "3", "tpl:1"]) == 2
    err = capsys.readouterr().err
    assert "unexpected extra argument (tpl:1)" in err and "--new-slurm-option" in err
    assert "hint: write its value attached (--new-slurm-option=VALUE)" in err
    assert "definition" not in submitted


def test_alloc_and_batch_have_their_own_help(capsys):
    assert run_cli(["batch", "--help"]) == 0
    out = capsys.readouterr().out
    assert "in a batch job" in out and "interactively" not in out
    assert "Usage: pcocc batch [OPTIONS] [BATCH_OPTIONS] TPL" in out


def test_alloc_e_is_a_command_string(submitted):
    assert run_cli(["alloc", "-E", "hostname", "tpl:1"]) == 0
    assert submitted["command"] == "hostname"


def test_batch_e_runs_a_host_script_file(submitted, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\necho \"$(hostname)\" 'it''s' ; `id`\n")
    assert run_cli(["batch", "-E", str(script), "tpl:1"]) == 0
    command = submitted["command"]
    packed = re.search(r"printf %s (\S+) \|", command).group(1)
    assert base64.b64decode(packed).decode() == script.read_text()
    # the script's text is not in the shell command line, only its base64
    assert "hostname" not in command


def test_batch_e_command_string_only_when_it_cannot_be_a_file(submitted, capsys, tmp_path):
    assert run_cli(["batch", "-E", "hostname -f", "tpl:1"]) == 0
    assert submitted["command"] == "hostname -f"
    assert run_cli(["batch", "-E", str(tmp_path / "missing.sh"), "tpl:1"]) == 2
    err = capsys.readouterr().err
    assert "no such script file" in err and "-E 'hostname -f'" in err
    assert run_cli(["batch", "-E", str(tmp_path), "tpl:1"]) == 2
    assert "not a regular file" in capsys.readouterr().err


# -- selecting a cluster -------------------------------------------------------------------
def _named(kv, batchid, name):
    add_cluster(kv, batchid)
    key = keys.cluster_definition(USER, batchid)
    rec = ClusterRecord.from_json(kv.get(key), key=key, batchid=batchid)
    rec.name = name
    kv.put(key, rec.to_json())


def test_select_by_job_name():
    kv = MemoryKv()
    _named(kv, "7", "web")
    _named(kv, "8", "db")
    _named(kv, "9", "db")
    views = clusters_of(kv, USER)
    assert select_cluster(views, None, {}, job_name="web").batchid == "7"
    assert select_cluster(views, "8", {}, job_name="db").batchid == "8"
    with pytest.raises(UsageError, match=r"2 running clusters are named 'db': 8, 9") as info:
        select_cluster(views, None, {}, job_name="db")
    assert "-j JOBID" in info.value.hint
    with pytest.raises(NotFound, match="no running cluster named 'api'") as info:
        select_cluster(views, None, {}, job_name="api")
    assert "7 (web)" in info.value.hint
    with pytest.raises(NotFound, match="cluster 7 is named 'web', not 'db'"):
        select_cluster(views, "7", {}, job_name="db")
    with pytest.raises(UsageError, match=r"several running clusters \(7 \(web\), 8 \(db\)"):
        select_cluster(views, None, {})


def test_record_keeps_the_name_and_refuses_control_characters():
    kv = MemoryKv()
    _named(kv, "7", "my job")
    key = keys.cluster_definition(USER, "7")
    assert ClusterRecord.from_json(kv.get(key), key=key).name == "my job"
    with pytest.raises(Exception, match="name"):
        ClusterRecord.from_json(kv.get(key).replace("my job", "my\\u001bjob"), key=key)


@pytest.fixture
def one_view(monkeypatch, tmp_path):
    """ssh/scp up to the program they run: the argv."""
    from pcocc.cluster import access

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PCOCC_RUN_DIR", str(tmp_path / "run"))
    (tmp_path / ".ssh").mkdir()
    monkeypatch.setattr(access, "ensure_user_key", lambda: "key")
    kv = MemoryKv()
    _named(kv, "7", "web")
    view = clusters_of(kv, USER)[0]
    seen = {}
    monkeypatch.setattr(access, "list_clusters", lambda env=None, etcd=None: [view])
    monkeypatch.setattr(access, "adapters", type("A", (), {"user_name": staticmethod(
        lambda: USER)}))

    def run(argv):
        seen["argv"] = list(argv)
        return 0

    monkeypatch.setattr(access, "run_interactive", run)
    return seen


def test_ssh_passes_its_options_as_argv_words(one_view, pcocc_env):
    evil = "ProxyCommand=sh -c 'touch /tmp/pwned'; $(id) `id` | >x"
    assert run_cli(["ssh", "-J", "web", "-L", "8888:localhost:8888", "-X", "-o", evil,
                    "root@vm1", "ls", "-l"]) == 0
    argv = one_view["argv"]
    assert argv[:2] == ["ssh", "-F"]
    assert argv[3:] == ["-L", "8888:localhost:8888", "-X", "-o", evil, "root@vm1", "ls", "-l"]


def test_ssh_p_is_the_vms_port_through_its_forward(one_view, pcocc_env, capsys):
    assert run_cli(["ssh", "-p", "22", "vm0"]) == 0
    assert "-p" not in one_view["argv"]
    assert run_cli(["ssh", "-p", "2222", "vm0"]) == 1
    assert "port 2222 of vm0 is not forwarded" in capsys.readouterr().err


def test_scp_recursive(one_view, pcocc_env):
    assert run_cli(["scp", "-J", "web", "-r", "-o", "a b", "dir", "vm0:"]) == 0
    assert one_view["argv"][3:] == ["-r", "-o", "a b", "dir", "vm0:"]


@pytest.mark.parametrize("command", [["ssh", "vm0"], ["scp", "f", "vm0:"], ["nc", "vm0", "22"],
                                     ["console", "vm0"], ["reset", "vm0"],
                                     ["monitor-cmd", "vm0", "info", "status"]])
def test_user_another_users_cluster_is_refused(one_view, pcocc_env, capsys, command):
    assert run_cli([command[0], "--user", "someone-else", "-j", "7", *command[1:]]) == 1
    err = capsys.readouterr().err
    assert "--user someone-else: pcocc cannot reach the clusters of another user" in err
    assert "argv" not in one_view


def test_user_oneself_is_allowed(one_view, pcocc_env):
    assert run_cli(["ssh", "--user", USER, "-J", "web", "vm0"]) == 0


def test_nc_takes_ncs_scan_verbose_and_timeout(one_view, pcocc_env, capsys, monkeypatch):
    import socket

    from pcocc.cluster import access

    view = access.list_clusters()[0]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        view.rnat[(0, 22)] = ("127.0.0.1", listener.getsockname()[1])
        assert run_cli(["nc", "-z", "-v", "-w", "5", "vm0", "22"]) == 0
        conn, _ = listener.accept()
        assert conn.recv(10) == b""  # -z: connected, sent nothing, closed
        conn.close()
    assert "connection to vm0 port 22 succeeded" in capsys.readouterr().err
    # nothing listens any more: -w bounds the attempt, the error names the VM
    assert run_cli(["nc", "-z", "-w", "2", "vm0", "22"]) == 1
    assert "cannot connect to vm0:22" in capsys.readouterr().err


# -- ps ------------------------------------------------------------------------------------
SQUEUE = (
    "12|alice|RUNNING|2|5:01|30:00|debug|pcocc-cluster|web|front\n"
    "13|bob|PENDING|1|0:00|10:00|debug|something else|pcocc\n"
    "14|carol|RUNNING|1|1:00|UNLIMITED|batch|pcocc-cluster|\n"
    "garbage line\n"
    "15|m\x1bal|RUNNING|1|1:00|1:00|batch|pcocc-cluster|x\n"
)


def test_squeue_lists_only_clusters(caplog):
    assert squeue_argv(None) == ["squeue", "--noheader", "--format=%i|%u|%T|%D|%M|%l|%P|%k|%j"]
    assert squeue_argv("alice")[-2:] == ["--user", "alice"]
    found = parse_squeue(SQUEUE, "pcocc-cluster")
    assert [(j.job_id, j.user, j.name) for j in found] == [("12", "alice", "web|front"),
                                                           ("14", "carol", "")]
    assert "garbage" in caplog.text and "user" in caplog.text


def test_ps_all_users(monkeypatch, pcocc_env, capsys):
    from pcocc.cluster import access, batchadapter

    me = getpass.getuser()
    others = [JobInfo("12", "alice", "web", "RUNNING", "2", "5:01"),
              JobInfo("13", me, "mine", "RUNNING", "1", "0:01")]
    asked = []

    class Manager:
        def list_jobs(self, user, comment):
            asked.append((user, comment))
            return [j for j in others if user in (None, j.user)]

    monkeypatch.setattr(access, "list_clusters", lambda env=None, etcd=None: [])
    monkeypatch.setattr(batchadapter, "batch_manager", lambda config: Manager())
    assert run_cli(["ps", "-a"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ID", "NAME", "USER", "STATE", "VMS", "NODES", "AGE"]
    assert out[1].split() == ["12", "web", "alice", "running", "-", "2", "5:01"]
    # a cluster of the caller's that etcd does not show yet (waiting for its nodes)
    assert out[2].split() == ["13", "mine", me, "running", "-", "1", "0:01"]
    assert len(out) == 3
    assert run_cli(["ps", "-u", "alice", "-J", "web"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["12", "web", "alice"]
    assert asked == [(None, "pcocc-cluster"), ("alice", "pcocc-cluster")]
    assert run_cli(["ps", "-u", "bad;user"]) == 2
