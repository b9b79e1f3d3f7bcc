"""Containers: OCI runtime specs, env and volumes, runtime backends, pods.

Public surface::

    spec.build_spec(...)            OCI runtime config.json (pure)
    env.merge_env(...)              environment precedence of ``pcocc run``
    volumes.parse_volume/parse_mount/resolve_mounts
    runtime.get_runtime(name)       crun, runc, unshare, vm; ``auto`` probes
    pods.PodStore                   pod records: list, status, gc, rm
    launch.run_pod(...)             prepare and run a pod (what ``pcocc run`` calls)
"""
