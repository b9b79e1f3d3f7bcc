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
