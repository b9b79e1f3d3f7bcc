# Sourced by helpers/setup: stop the daemons that a package install started, and only those.
#
# On a real node the site's own munged, slurmctld, slurmd or etcd may be running. Stopping
# them by name would take the site down, so setup records the PIDs of these daemons before
# it installs and, after, stops only the PIDs that appeared during the install.

# Process names (as the kernel reports them) of the daemons our packages ship.
PCOCC_PACKAGE_DAEMONS='munged|slurmctld|slurmd|slurmdbd|etcd|docker-registry'

# Print the PIDs of running package daemons, one per line, sorted.
daemon_pids() {
  pgrep -x "$PCOCC_PACKAGE_DAEMONS" | sort -n || true
}

# stop_new_daemons BEFORE: stop every package daemon whose PID is not in BEFORE (the output
# of daemon_pids taken before the install) and say which; leave the others alone.
stop_new_daemons() {
  local before="$1" pid name
  for pid in $(comm -13 <(printf '%s\n' "$before" | sort) <(daemon_pids | sort)); do
    name=$(ps -o comm= -p "$pid" 2>/dev/null) || continue
    echo "helpers/setup: stopping $name (pid $pid), started by the package install" >&2
    kill "$pid" 2>/dev/null || true
  done
}
