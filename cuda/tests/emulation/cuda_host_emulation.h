// Test-only: the CUDA runtime types and a host scheduler that runs a kernel launch's GPU
// threads, so the ctest build can run cuda/gpu/*.cu unchanged on a machine without a GPU. Never
// part of the built extension (setup.py does not list this folder).
//
// Each block's threads are fibers (ucontext) on one OS thread: they run concurrently, each until
// it reaches a barrier (__syncthreads, or the warp exchange of __shfl_xor_sync), and the next one
// to run is drawn at random (seeded) at every switch, so code that reads before another thread's
// write without a barrier between them sees a schedule-dependent, wrong value. A barrier that
// can never complete (some thread returned, or waits at another one) is reported as a deadlock
// instead of hanging; a thread that never reaches one is caught by the watchdog. Blocks run one
// after another (CUDA gives no order or concurrency between blocks of a launch).
//
// The CUDA built-ins themselves (threadIdx, __shared__, ...) are macros in cuda_host_builtins.h,
// which only the kernel sources see (through the cuda_runtime.h / cuda_fp16.h / cuda_bf16.h shims).
#pragma once

#include <ucontext.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

typedef struct CUstream_st* cudaStream_t;
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

namespace vr_emu {

constexpr int kWarpSize = 32;
constexpr size_t kStackBytes = 64 * 1024;

enum class State { Runnable, AtBlockBarrier, AtWarpBarrier, Done };

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  uint3 tid;
  State state = State::Done;
  unsigned shfl_phase = 0;
};

struct Warp {
  int size = 0, arrived = 0;
  uint64_t slots[2][kWarpSize];  // double-buffered: a shuffle writes one half, the next the other
};

// The emulator's state: one launch at a time, on the thread that calls the launcher.
struct Emulator {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<int> runnable;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  uint3 block_idx{0, 0, 0};
  dim3 block_dim, grid_dim;
  int block_arrived = 0;
  const std::function<void()>* body = nullptr;
  std::mt19937_64 rng{0x5eed};
  cudaError_t last_error = cudaSuccess;
  std::string kernel = "-", failure;  // the kernel being run; the first failure's description
  int failures = 0;
};

inline Emulator& emu() {
  static Emulator e;
  return e;
}

inline void fail(const std::string& what) {
  Emulator& e = emu();
  if (e.failures++ == 0) e.failure = what;
  std::fprintf(stderr, "cuda emulation: %s\n", what.c_str());
  e.last_error = cudaErrorLaunchFailure;
}

inline void set_seed(uint64_t seed) { emu().rng.seed(seed); }
inline int failures() { return emu().failures; }

// Ends the process with exit code 124 (as `timeout` does) if it still runs after `seconds`: a
// thread that never reaches its barrier, or a strided loop that never ends, is a hang.
inline void start_watchdog(int seconds) {
  std::thread([seconds] {
    std::this_thread::sleep_for(std::chrono::seconds(seconds));
    std::fprintf(stderr, "cuda emulation watchdog: still running after %d s in kernel %s: a hang\n", seconds,
                 emu().kernel.c_str());
    std::fflush(stderr);
    std::_Exit(124);
  }).detach();
}

// Back to the scheduler; the fiber's state says why (barrier or done).
inline void yield() {
  Emulator& e = emu();
  swapcontext(&e.current->ctx, &e.scheduler);
}

inline void fiber_main() {
  Emulator& e = emu();
  (*e.body)();
  e.current->state = State::Done;
  swapcontext(&e.current->ctx, &e.scheduler);
}

inline int thread_count() {
  const Emulator& e = emu();
  return static_cast<int>(e.block_dim.x * e.block_dim.y * e.block_dim.z);
}

inline int linear_tid(const Fiber& f) {
  const Emulator& e = emu();
  return static_cast<int>(f.tid.x + e.block_dim.x * (f.tid.y + e.block_dim.y * f.tid.z));
}

inline void release(State waiting) {
  Emulator& e = emu();
  for (int i = 0; i < static_cast<int>(e.fibers.size()) && i < thread_count(); ++i) {
    if (e.fibers[i].state == waiting) {
      e.fibers[i].state = State::Runnable;
      e.runnable.push_back(i);
    }
  }
}

inline void release_warp(int warp) {
  Emulator& e = emu();
  const int lo = warp * kWarpSize, hi = lo + e.warps[warp].size;
  for (int i = lo; i < hi; ++i) {
    if (e.fibers[i].state == State::AtWarpBarrier) {
      e.fibers[i].state = State::Runnable;
      e.runnable.push_back(i);
    }
  }
}

inline void sync_block() {
  Emulator& e = emu();
  if (e.current == nullptr) {
    fail("__syncthreads outside a kernel");
    return;
  }
  e.current->state = State::AtBlockBarrier;
  if (++e.block_arrived == thread_count()) {
    e.block_arrived = 0;
    release(State::AtBlockBarrier);  // the caller too: it is runnable again, in random order
  }
  yield();
}

// Every lane of the calling thread's warp must call this with the same sequence of shuffles
// (as CUDA's full-mask __shfl_xor_sync requires); a lane that does not is a deadlock.
inline uint64_t exchange(uint64_t value, unsigned mask, int lane_mask, int width) {
  Emulator& e = emu();
  Fiber& self = *e.current;
  const int tid = linear_tid(self), warp = tid / kWarpSize, lane = tid % kWarpSize;
  Warp& w = e.warps[warp];
  if (mask != 0xffffffffu || width != kWarpSize) fail("__shfl_xor_sync: only the full mask over 32 lanes is emulated");
  if (w.size != kWarpSize) fail("__shfl_xor_sync with the full mask in a partial warp (block size not a multiple of 32)");
  const int src = lane ^ lane_mask;
  if (lane_mask < 0 || src >= w.size) {
    fail("__shfl_xor_sync: lane mask " + std::to_string(lane_mask) + " reads outside the warp");
    return value;
  }
  const unsigned phase = self.shfl_phase++ & 1u;
  w.slots[phase][lane] = value;
  self.state = State::AtWarpBarrier;
  if (++w.arrived == w.size) {
    w.arrived = 0;
    release_warp(warp);
  }
  yield();
  return w.slots[phase][src];
}

// Runs one launch: every block in turn, each block's threads as fibers until all are done.
inline cudaError_t launch(const char* name, dim3 grid, dim3 block, const std::function<void()>& body) {
  Emulator& e = emu();
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 2147483647u || grid.y > 65535u || grid.z > 65535u) {
    e.last_error = cudaErrorInvalidConfiguration;  // what the CUDA runtime reports for it
    return e.last_error;
  }
  e.kernel = name;
  e.block_dim = block;
  e.grid_dim = grid;
  e.body = &body;
  const int n = static_cast<int>(threads);
  if (static_cast<int>(e.fibers.size()) < n) e.fibers.resize(n);
  e.warps.assign((n + kWarpSize - 1) / kWarpSize, Warp{});
  for (int w = 0; w < static_cast<int>(e.warps.size()); ++w) e.warps[w].size = std::min(kWarpSize, n - w * kWarpSize);
  for (unsigned bz = 0; bz < grid.z; ++bz) {
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        e.block_idx = {bx, by, bz};
        e.block_arrived = 0;
        e.runnable.clear();
        for (int i = 0; i < n; ++i) {
          Fiber& f = e.fibers[i];
          if (!f.stack) f.stack.reset(new char[kStackBytes]);
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.get();
          f.ctx.uc_stack.ss_size = kStackBytes;
          f.ctx.uc_link = nullptr;
          makecontext(&f.ctx, fiber_main, 0);
          f.tid = {static_cast<unsigned>(i) % block.x, (static_cast<unsigned>(i) / block.x) % block.y,
                   static_cast<unsigned>(i) / (block.x * block.y)};
          f.state = State::Runnable;
          f.shfl_phase = 0;
          e.runnable.push_back(i);
        }
        for (auto& w : e.warps) w.arrived = 0;
        while (!e.runnable.empty()) {
          const size_t pick = e.rng() % e.runnable.size();
          const int i = e.runnable[pick];
          e.runnable[pick] = e.runnable.back();
          e.runnable.pop_back();
          e.current = &e.fibers[i];
          swapcontext(&e.scheduler, &e.current->ctx);
          e.current = nullptr;
        }
        int done = 0, at_block = 0, at_warp = 0;
        for (int i = 0; i < n; ++i) {
          done += e.fibers[i].state == State::Done;
          at_block += e.fibers[i].state == State::AtBlockBarrier;
          at_warp += e.fibers[i].state == State::AtWarpBarrier;
        }
        if (done != n) {
          fail(std::string("deadlock in ") + name + ", block " + std::to_string(bx) + ": " + std::to_string(done) +
               " of " + std::to_string(n) + " threads returned, " + std::to_string(at_block) +
               " wait at __syncthreads, " + std::to_string(at_warp) + " at a warp shuffle");
          e.kernel = "-";
          return e.last_error;
        }
      }
    }
  }
  e.kernel = "-";
  return cudaSuccess;
}

// `VR_LAUNCH(kernel, grid, block, stream)(args...)`: arguments copied at the launch, as in CUDA.
struct Launch {
  const char* name;
  dim3 grid, block;
  template <typename Kernel>
  auto with(Kernel kernel) const {
    return [cfg = *this, kernel](auto... args) {
      const std::function<void()> body = [&] { kernel(args...); };
      const cudaError_t err = launch(cfg.name, cfg.grid, cfg.block, body);
      if (err != cudaSuccess) emu().last_error = err;
    };
  }
};

}  // namespace vr_emu

inline cudaError_t cudaGetLastError() {
  const cudaError_t err = vr_emu::emu().last_error;
  vr_emu::emu().last_error = cudaSuccess;
  return err;
}
