"""pcocc: private cloud on a compute cluster.

Run virtual clusters of QEMU VMs, or containers, inside Slurm jobs, and manage layered
repositories of VM and container images.
"""

__version__ = "0.1.0"
