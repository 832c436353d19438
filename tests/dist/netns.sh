# Sourced by the multi-host tests and benchmarks (after support/scratch.sh, or with $dir set to
# a scratch directory): N "hosts" as Linux network namespaces ${FRUGAL_NETNS}h0..h{N-1}, each with
# eth0 = 10.99.0.(i+1)/24 on a veth whose other end ${FRUGAL_NETNS}p$i is a port of a bridge in a
# namespace of its own (${FRUGAL_NETNS}br), so nothing is added to the root namespace. mpirun runs
# in host 0 and starts the others' orted through netns_agent.sh, over TCP on that subnet only.
# Everything is removed on exit, INT and TERM, the processes inside first, even when a test fails.
# Needs root and `ip netns`; without them the test is skipped (exit 77, ctest's SKIP_RETURN_CODE).
netns_skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || netns_skip "multi-host tests need root (network namespaces)"
command -v ip >/dev/null || netns_skip "no ip command (iproute2)"
export FRUGAL_NETNS=fn$$ dir  # dir: the scratch directory, where each host's TMPDIR is (netns_agent.sh)
# the CPUs this test may use, host i's being the (i mod count)-th (netns_mpirun, netns_agent.sh)
export FRUGAL_NETNS_CPUS="$(/usr/bin/python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))')"
netns_agent="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/netns_agent.sh"
ip netns add "${FRUGAL_NETNS}br" 2>/dev/null || netns_skip "ip netns add fails here (no network namespaces)"
netns_hosts=0

# netns_down: kill every process in the namespaces (mpirun, orted, ranks), then delete them; the
# veths go with their namespaces.
netns_down() {
  local ns p i
  for ns in $(ip netns list | awk -v p="^${FRUGAL_NETNS}" '$1 ~ p {print $1}'); do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  done
  for ns in $(ip netns list | awk -v p="^${FRUGAL_NETNS}" '$1 ~ p {print $1}'); do
    for i in $(seq 1 50); do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break; sleep 0.1; done
    ip netns del "$ns"
  done
  for i in $(seq 0 $((netns_hosts - 1))); do ip link del "${FRUGAL_NETNS}v$i" 2>/dev/null; done  # a half-made pair
  return 0
}
trap 'netns_down; rm -rf "${dir:-/nonexistent}"' EXIT
trap 'exit 130' INT TERM
# A signal arrives while a command runs in the foreground (bash runs the trap once it ends), and
# a SIGKILL (ctest's timeout) runs none: so each run first removes what runs that died left.
for ns in $(ip netns list | awk '$1 ~ /^fn[0-9]+(h[0-9]+|br)$/ {print $1}'); do
  owner=${ns#fn}
  owner=${owner%%[hb]*}
  kill -0 "$owner" 2>/dev/null && continue
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  sleep 0.2
  ip netns del "$ns" 2>/dev/null
done

# netns_up N: the bridge and N hosts
netns_up() {
  local i ns
  ip -n "${FRUGAL_NETNS}br" link add br0 type bridge && ip -n "${FRUGAL_NETNS}br" link set br0 up || fail "netns: bridge"
  for i in $(seq 0 $(($1 - 1))); do
    ns="${FRUGAL_NETNS}h$i"
    netns_hosts=$((i + 1))
    ip netns add "$ns" &&
      ip link add "${FRUGAL_NETNS}v$i" type veth peer name "${FRUGAL_NETNS}p$i" &&
      ip link set "${FRUGAL_NETNS}p$i" netns "${FRUGAL_NETNS}br" &&
      ip -n "${FRUGAL_NETNS}br" link set "${FRUGAL_NETNS}p$i" master br0 up &&
      ip link set "${FRUGAL_NETNS}v$i" netns "$ns" &&
      ip -n "$ns" link set "${FRUGAL_NETNS}v$i" name eth0 &&
      ip -n "$ns" addr add "10.99.0.$((i + 1))/24" dev eth0 &&
      ip -n "$ns" link set eth0 up && ip -n "$ns" link set lo up || fail "netns: host $i"
  done
}

# netns_link HOST up|down: connect or cut HOST from the others (the bridge side of its veth)
netns_link() { ip -n "${FRUGAL_NETNS}br" link set "${FRUGAL_NETNS}p$1" "$2"; }

# netns_rate RATE: every host sends at most RATE (tc's units: 1gbit) into the bridge, and the
# bridge at most RATE to each host: a token bucket both ways on every link
netns_rate() {
  local i
  for i in $(seq 0 $((netns_hosts - 1))); do
    ip netns exec "${FRUGAL_NETNS}h$i" tc qdisc replace dev eth0 root tbf rate "$1" burst 256kb latency 50ms &&
      ip netns exec "${FRUGAL_NETNS}br" tc qdisc replace dev "${FRUGAL_NETNS}p$i" root tbf rate "$1" burst 256kb latency 50ms ||
      fail "netns: tc tbf rate $1"
  done
}

# netns_mpirun NP ARGS...: mpirun in host 0 starting NP ranks spread evenly over the hosts
# (rank r on host r * hosts / NP), TCP on the test subnet only; ARGS are mpirun's (options, then
# the program and its arguments). The environment of this shell reaches every rank.
netns_mpirun() {
  local np=$1 i
  shift
  : > hostfile
  for i in $(seq 0 $((netns_hosts - 1))); do
    echo "10.99.0.$((i + 1)) slots=$(( (np + netns_hosts - 1) / netns_hosts ))" >> hostfile
  done
  # each host a TMPDIR of its own (netns_agent.sh): the hosts share one hostname, and OpenMPI's
  # daemons name their session directories by hostname and job, so on a shared /tmp one of a 4-host
  # job's daemons could lose its directory and the launch waited forever (seen 1 run in 3 to 7)
  # Each host its own CPU, as real hosts have: host i's daemon (mpirun itself on host 0, orted on
  # the others, netns_agent.sh) runs on the (i mod count)-th of FRUGAL_NETNS_CPUS, and its ranks
  # inherit that (--bind-to none). OpenMPI's default binding (np <= 2: to a core) put every rank on CPU 0: each
  # daemon thinks it has the machine to itself and binds its first rank to its first core.
  mkdir -p "$dir/ompi-h0"
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 TMPDIR="$dir/ompi-h0" ip netns exec "${FRUGAL_NETNS}h0" \
    taskset -c "${FRUGAL_NETNS_CPUS%% *}" mpirun --hostfile hostfile -np "$np" --map-by slot --oversubscribe --bind-to none \
    --mca plm_rsh_agent "$netns_agent" --mca plm_rsh_no_tree_spawn 1 \
    --mca btl tcp,self --mca btl_tcp_if_include 10.99.0.0/24 --mca oob_tcp_if_include 10.99.0.0/24 \
    -x OMP_NUM_THREADS "$@"
}
