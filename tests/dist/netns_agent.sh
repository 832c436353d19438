#!/usr/bin/env bash
# mpirun's launcher agent (--mca plm_rsh_agent) for the hosts of netns.sh: like ssh, it is called
# as `netns_agent.sh HOST COMMAND...` and runs the command through the shell, here inside the
# network namespace of HOST (an address 10.99.0.K is host K-1 of the run named by $FRUGAL_NETNS).
host=$1
shift
[ -n "${FRUGAL_NETNS:-}" ] || { echo "netns_agent.sh: FRUGAL_NETNS is not set (use netns.sh's netns_mpirun)" >&2; exit 2; }
h=$(( ${host##*.} - 1 ))
# each host its own TMPDIR, and its own CPU: the (h mod count)-th of FRUGAL_NETNS_CPUS (see netns_mpirun)
cpus=(${FRUGAL_NETNS_CPUS:-0})
mkdir -p "$dir/ompi-h$h" &&
  exec ip netns exec "${FRUGAL_NETNS}h$h" taskset -c "${cpus[h % ${#cpus[@]}]}" env TMPDIR="$dir/ompi-h$h" /bin/sh -c "$*"
