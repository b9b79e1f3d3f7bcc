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
