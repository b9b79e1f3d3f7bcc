"""The processes on the way to a cluster's first VM import only what they use (issue 18).

``pcocc alloc`` and the launcher reach ``pcocc.vm.pinning`` through the cluster definition;
they must not load QEMU's QMP client (asyncio), the seed builder (yaml) or the Machine: each
is a Python start on the critical path of ``pcocc alloc`` to the first ssh answer.
"""

from test_config_lazy import _modules_after

LAUNCHER_NEEDS_NOT = ("pcocc.vm.machine", "pcocc.vm.qmp", "pcocc.vm.seed", "asyncio")


def test_the_cluster_job_module_leaves_the_vm_machinery_unloaded():
    mods = _modules_after("import pcocc.cluster.jobs, pcocc.cluster.launcher")
    assert "pcocc.vm.pinning" in mods
    assert not mods & set(LAUNCHER_NEEDS_NOT)


def test_resolving_the_networks_of_a_definition_leaves_yaml_unloaded():
    """alloc resolves the networks of every definition; yaml is for private-network seeds."""
    mods = _modules_after("import pcocc.net.resolve, pcocc.cluster.jobs")
    assert "pcocc.net.private" in mods and "yaml" not in mods


def test_the_vm_package_still_offers_its_names():
    mods = _modules_after("from pcocc.vm import Machine, SeedSpec, VmSpec; import pcocc.vm as v;"
                          " assert v.build_argv and v.VmBootError and v.HostKey and v.Drive")
    assert "pcocc.vm.machine" in mods


#: what a node process loads only once its QEMU runs (pcocc.cluster.noderun)
NODE_LOADS_AFTER_QEMU = ("pcocc.kv.client", "etcd3", "grpc", "jsonschema")


def test_the_node_process_reaches_qemu_without_the_etcd_client_or_jsonschema():
    from pcocc.cluster.definition import build_definition
    from pcocc.cluster.noderun import encode_definition

    text = encode_definition(build_definition("t:1", {"t": {"kernel": "/k", "accel": "tcg"}}))
    mods = _modules_after(
        "from pcocc.cli import internal\n"
        "from pcocc.cluster import adapters, earlynodes, node, noderun, vmbuild, vmsettings\n"
        "from pcocc.vm import accel, machine, seed\n"
        f"noderun.decode_definition({text!r}, check=False)\n"
    )
    assert {"pcocc.cluster.node", "pcocc.vm.machine", "pcocc.kv.connect"} <= mods
    assert not {m for m in mods if m.split(".")[0] in NODE_LOADS_AFTER_QEMU
                or m in NODE_LOADS_AFTER_QEMU}


def test_ssh_in_the_cluster_job_loads_no_click_config_or_etcd_client(tmp_path):
    """`pcocc ssh vmN` in the -E command: ssh on the launcher's files (pcocc.cli.fastssh)."""
    from pcocc.cluster.sshkeys import prepare_ssh_files
    from pcocc.cluster.vmstate import VmRecord

    import base64

    key = "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + b"k" * 32).decode()
    (tmp_path / "7").mkdir(mode=0o700, parents=True)
    tmp_path.chmod(0o700)
    prepare_ssh_files(tmp_path / "7", "7", {0: VmRecord(
        rank=0, host="n1", status="running", node_pid=1, ssh_port=4022, address="127.0.0.1",
        host_key=key)})
    mods = _modules_after(
        "import os\n"
        f"os.environ.update(PCOCC_RUN_DIR={str(tmp_path)!r}, PCOCC_JOB_ID='7')\n"
        "import sys\n"
        "from pcocc import proc\n"
        "def exec_ssh(argv):  # what ssh would replace: the modules loaded until then\n"
        "    print(' '.join(sorted(sys.modules)), flush=True)\n"
        "    os._exit(0)\n"
        "proc.replace_process = exec_ssh\n"
        "from pcocc.cli.main import run_cli\n"
        "run_cli(['ssh', 'vm0', 'true'])\n"
    )
    assert (tmp_path / "7" / "ssh_config").exists() and "pcocc.cli.fastssh" in mods
    assert not {m for m in mods if m.split(".")[0] in ("click", "yaml", "jsonschema", "etcd3",
                                                       "grpc", "http")}
    assert not {m for m in mods if m.startswith(("pcocc.kv", "pcocc.config", "pcocc.cluster"))}


def test_the_launcher_and_node_processes_start_without_click(tmp_path):
    """`internal run` / `internal launcher` as pcocc writes them (pcocc.cli.fastinternal)."""
    for command, target in ((["internal", "run"], "pcocc.cluster.noderun.run_node"),
                            (["-v", "internal", "launcher", "-E", "true"],
                             "pcocc.cluster.jobs.run_launcher")):
        module, _, name = target.rpartition(".")
        mods = _modules_after(
            "import os, sys, importlib\n"
            f"os.environ.update(PCOCC_SYSTEM_CONF_DIR={str(tmp_path)!r},"
            f" PCOCC_USER_CONF_DIR={str(tmp_path)!r})\n"
            f"m = importlib.import_module({module!r})\n"
            "def reached(*args, **kwargs):\n"
            "    print(' '.join(sorted(sys.modules)), flush=True)\n"
            "    os._exit(0)\n"
            f"setattr(m, {name!r}, reached)\n"
            "from pcocc.cli.main import run_cli\n"
            f"run_cli({command!r})\n"
        )
        assert "pcocc.cli.fastinternal" in mods and "click" not in mods, command
