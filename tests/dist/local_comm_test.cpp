// The single-process Comm: a world of one whose collectives leave data as the one rank has it.
#include "dist/comm.h"
#include "support/support.h"

namespace frugal {
namespace {

TEST(LocalComm, WorldOfOneCollectives) {
  auto c = make_local_comm();
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->size(), 1);
  std::vector<float> a = {1, 2, 3}, out(3);
  c->all_reduce(a.data(), 3, ReduceOp::sum)->wait();
  EXPECT_EQ(a, (std::vector<float>{1, 2, 3}));
  c->reduce_scatter(a.data(), out.data(), 3, ReduceOp::sum)->wait();
  EXPECT_EQ(out, a);
  std::fill(out.begin(), out.end(), 0.0f);
  c->all_gather(a.data(), out.data(), 3)->wait();
  EXPECT_EQ(out, a);
  c->broadcast(a.data(), 3, 0)->wait();
  c->barrier();
  EXPECT_EQ(a, (std::vector<float>{1, 2, 3}));
}

}  // namespace
}  // namespace frugal
