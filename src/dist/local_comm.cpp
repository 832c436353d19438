// LocalComm: the single-process Comm; and what the launcher's environment says about this
// host's ranks, in every build (with or without MPI).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/core.h"
#include "dist/comm.h"

namespace frugal {

namespace {

struct Done final : Work {
  void wait() override {}
};

class LocalComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::unique_ptr<Work> all_reduce(float*, int64_t, ReduceOp) override { return done(); }
  std::unique_ptr<Work> all_reduce_bf16(float*, uint16_t*, int64_t) override { return done(); }
  std::unique_ptr<Work> reduce_scatter(float* in, float* out, int64_t n, ReduceOp) override {
    if (in != out) std::memmove(out, in, size_t(n) * sizeof(float));
    return done();
  }
  std::unique_ptr<Work> all_gather(const float* in, float* out, int64_t n) override {
    if (in != out) std::memmove(out, in, size_t(n) * sizeof(float));
    return done();
  }
  std::unique_ptr<Work> all_gather_inplace(void*, int64_t, int64_t, int) override { return done(); }
  std::unique_ptr<Work> broadcast(float*, int64_t, int) override { return done(); }
  void barrier() override {}

 private:
  static std::unique_ptr<Work> done() { return std::make_unique<Done>(); }
};

}  // namespace

std::unique_ptr<Comm> make_local_comm() { return std::make_unique<LocalComm>(); }

namespace {

// A whole decimal number (digits only), or -1.
int64_t whole(const std::string& s) {
  if (s.empty() || s.size() > 9 || s.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(s);
}
int64_t positive(const std::string& s) { return whole(s) > 0 ? whole(s) : -1; }

// Entry `node` of a Slurm tasks-per-node list, "N" or "N(xK)" items joined by commas, -1 when
// any part of the list is malformed, 0 when it is well formed but shorter than node + 1 entries.
int64_t tasks_on_node(const std::string& list, int64_t node) {
  size_t at = 0;
  int64_t found = 0;
  while (true) {
    const size_t end = std::min(list.find(',', at), list.size());
    const std::string item = list.substr(at, end - at);
    const size_t paren = item.find('(');
    int64_t tasks = positive(item.substr(0, paren)), repeat = 1;
    if (paren != std::string::npos) {
      if (item.size() < paren + 4 || item.compare(paren, 2, "(x") != 0 || item.back() != ')') return -1;
      repeat = positive(item.substr(paren + 2, item.size() - paren - 3));
    }
    if (tasks < 0 || repeat < 0) return -1;
    if (node < repeat && node >= 0) found = tasks;
    node -= repeat;
    if (end == list.size()) return found;
    at = end + 1;
  }
}

}  // namespace

int ranks_on_this_host() {
  if (const char* v = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) {
    const int64_t n = positive(v);
    if (n < 0) user_error("OMPI_COMM_WORLD_LOCAL_SIZE = \"{}\": expected a positive whole number (the ranks mpirun started on this host)", v);
    return int(n);
  }
  const char* node_id = std::getenv("SLURM_NODEID");
  for (const char* name : {"SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"}) {
    const char* v = std::getenv(name);
    if (!v) continue;
    const int64_t node = node_id ? whole(node_id) : -1;
    if (node < 0)
      user_error("SLURM_NODEID = \"{}\": expected a whole number (this node's index into {})", node_id ? node_id : "", name);
    const int64_t n = tasks_on_node(v, node);
    if (n < 0)
      user_error("{} = \"{}\": expected Slurm's tasks per node, e.g. \"2(x3),1\" (counts, each optionally followed by (xREPEAT), joined by commas)", name, v);
    if (n == 0) user_error("{} = \"{}\" has no entry for this node (SLURM_NODEID = {})", name, v, node_id);
    return int(n);
  }
  if (const char* v = std::getenv("SLURM_NTASKS_PER_NODE")) {
    const int64_t n = positive(v);
    if (n < 0) user_error("SLURM_NTASKS_PER_NODE = \"{}\": expected a positive whole number (srun --ntasks-per-node)", v);
    return int(n);
  }
  return 1;
}

}  // namespace frugal
