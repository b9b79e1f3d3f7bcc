"""Container runtime backends, one module each, found by name through the registry of
:mod:`pcocc.ctr.runtimes.base`: ``crun`` (preferred) and ``runc`` (:mod:`.oci`), ``unshare``
(util-linux ``unshare`` plus a small Python stage 2, :mod:`pcocc.ctr.nsinit`, when no OCI
runtime works; :mod:`.unshare`) and ``vm`` (each app in a small QEMU VM; :mod:`.vm`, only
when asked for by name). Only the module of the backend in use is imported.

Which backend works on this host, and in which mode, is found by :mod:`pcocc.ctr.probe`,
whose ``get_runtime(name)`` is the entry point.
"""
