"""Virtual clusters: definition, states, the launcher inside the allocation, the per-VM node
process, and what user commands need to find a running cluster.

Integration points with other packages (etcd client, batch managers, QEMU machines, image
repositories, templates) are narrow protocols in :mod:`pcocc.cluster.ports`, bound to the real
implementations in :mod:`pcocc.cluster.adapters`.
"""
