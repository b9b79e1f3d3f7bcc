"""Containers: OCI runtime specs, env and volumes, runtime backends, pods.

Public surface::

    spec.build_spec(...)            OCI runtime config.json (pure)
    env.merge_env(...)              environment precedence of ``pcocc run``
    volumes.parse_volume/parse_mount/resolve_mounts
    probe.get_runtime(name)         crun, runc, unshare, vm (``runtimes/``); ``auto`` probes
    pods.PodStore                   pod records: list, status, gc, rm
    pod.run_request(req, config, notify)  images to root filesystems, then one pod: ``pcocc run``
    launch.run_pod(...)             prepare, start and wait for a pod of prepared apps
    multinode.run_tasks/run_task    ``pcocc run -N/-n``: one pod per task of an allocation
"""
