"""The options of Slurm's salloc and sbatch, and whether each takes a value.

``pcocc alloc`` and ``pcocc batch`` pass every option that is not pcocc's to salloc or
sbatch, wherever the user put it (:mod:`pcocc.optsplit`), so pcocc must know which of them
take a value: ``-t 30`` is one option, ``-H tpl:2`` an option and the cluster definition.

The table is the union of salloc's and sbatch's options of Slurm 22.05 (man pages
salloc(1), sbatch(1)); no letter means one thing to salloc and another to sbatch. An option
of a later Slurm that is missing here still reaches Slurm, as it is; it only has to carry
its value attached (``--new-opt=value``) or after ``--``. tests/unit/test_slurm_options.py
checks the table against the ``--help`` text of both programs.
"""

from __future__ import annotations

from pcocc.optsplit import OptionTable

SLURM_ALLOC_OPTIONS = OptionTable.of(
    "salloc/sbatch",
    flags=(
        "-H", "--hold", "-O", "--overcommit", "-Q", "--quiet", "-s", "--oversubscribe",
        "-v", "--verbose", "-V", "--version", "-h", "--help", "--usage", "-W", "--wait",
        "--bell", "--no-bell", "--contiguous", "--reboot", "--spread-job",
        "--use-min-nodes", "--no-shell", "--ignore-pbs", "--parsable", "--requeue",
        "--no-requeue", "--test-only",
    ),
    values=(
        "-A", "--account", "-a", "--array", "-B", "--extra-node-info", "-b", "--begin",
        "-C", "--constraint", "-c", "--cpus-per-task", "-D", "--chdir", "-d",
        "--dependency", "-e", "--error", "-F", "--nodefile", "-G", "--gpus", "-i",
        "--input", "-J", "--job-name", "-L", "--licenses", "-M", "--clusters", "-m",
        "--distribution", "-N", "--nodes", "-n", "--ntasks", "-o", "--output", "-p",
        "--partition", "-q", "--qos", "-S", "--core-spec", "-t", "--time", "-w",
        "--nodelist", "-x", "--exclude",
        "--acctg-freq", "--batch", "--bb", "--bbf", "--cluster-constraint", "--comment",
        "--container", "--cores-per-socket", "--cpu-freq", "--cpus-per-gpu", "--deadline",
        "--delay-boot", "--export", "--export-file", "--gid", "--gpu-bind", "--gpu-freq",
        "--gpus-per-node", "--gpus-per-socket", "--gpus-per-task", "--gres",
        "--gres-flags", "--hint", "--kill-on-invalid-dep", "--mail-type", "--mail-user",
        "--mcs-label", "--mem", "--mem-bind", "--mem-per-cpu", "--mem-per-gpu",
        "--mincpus", "--network", "--ntasks-per-core", "--ntasks-per-gpu",
        "--ntasks-per-node", "--ntasks-per-socket", "--open-mode", "--power", "--prefer",
        "--priority", "--profile", "--reservation", "--signal", "--sockets-per-node",
        "--switches", "--thread-spec", "--threads-per-core", "--time-min", "--tmp",
        "--tres-per-task", "--uid", "--wait-all-nodes", "--wckey", "--wrap",
    ),
    optional=(
        "-I", "--immediate", "-K", "--kill-command", "-k", "--no-kill", "--exclusive",
        "--get-user-env", "--nice", "--propagate", "--x11",
    ),
)  # fmt: skip
