// Peak throughput of the 1-bit tensor-core MMA used by binary_conv2d, next to the int8 MMA:
//
//   mma_peak [iterations] [blocks_per_sm]
//
// Every warp issues `iterations` rounds of kChains independent MMAs on register operands (no
// memory traffic), so the result is the instruction's peak on this GPU. Throughput is reported
// as TOPS with the usual convention of 2 * M * N * K operations per MMA (K in elements: bits for
// .b1, bytes for .s8): m16n8k256.and.popc counts 65,536 ops, m16n8k32.s8 8,192.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

namespace {

constexpr int kThreads = 256;
constexpr int kChains = 8;  // independent accumulators per warp: enough to hide the MMA latency

enum class Kind { B1AndPopc, S8 };

template <Kind kind>
__device__ __forceinline__ void mma(int (&acc)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
  if constexpr (kind == Kind::B1AndPopc) {
    asm volatile(
        "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+r"(acc[0]), "+r"(acc[1]), "+r"(acc[2]), "+r"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+r"(acc[0]), "+r"(acc[1]), "+r"(acc[2]), "+r"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

template <Kind kind>
__global__ void __launch_bounds__(kThreads) mma_loop(int iterations, int* sink) {
  // Operands derived from the thread index so the compiler cannot fold them.
  const unsigned seed = (blockIdx.x * kThreads + threadIdx.x) * 2654435761u;
  const unsigned a[4] = {seed, seed ^ 0x55555555u, seed + 1u, ~seed};
  const unsigned b[2] = {seed * 3u, seed ^ 0x0F0F0F0Fu};
  int acc[kChains][4] = {};
  for (int i = 0; i < iterations; ++i) {
#pragma unroll
    for (int c = 0; c < kChains; ++c) mma<kind>(acc[c], a, b);
  }
  int total = 0;
#pragma unroll
  for (int c = 0; c < kChains; ++c) total += acc[c][0] + acc[c][1] + acc[c][2] + acc[c][3];
  sink[blockIdx.x * kThreads + threadIdx.x] = total;  // keeps every MMA alive
}

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(status));
    std::exit(1);
  }
}

template <Kind kind>
double tops(int blocks, int iterations, int* sink, double ops_per_mma) {
  mma_loop<kind><<<blocks, kThreads>>>(1, sink);  // warm-up (clocks, module load)
  check(cudaGetLastError(), "launch");
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  check(cudaEventRecord(start), "record");
  mma_loop<kind><<<blocks, kThreads>>>(iterations, sink);
  check(cudaGetLastError(), "launch");
  check(cudaEventRecord(stop), "record");
  check(cudaEventSynchronize(stop), "synchronize");
  float ms = 0.0f;
  check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  const double mmas = static_cast<double>(blocks) * (kThreads / 32) * iterations * kChains;
  return mmas * ops_per_mma / (ms * 1e-3) / 1e12;
}

}  // namespace

int main(int argc, char** argv) {
  const int iterations = argc > 1 ? std::atoi(argv[1]) : 20000;
  const int blocks_per_sm = argc > 2 ? std::atoi(argv[2]) : 4;
  int device = 0;
  cudaDeviceProp prop{};
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  if (prop.major < 8) {
    std::fprintf(stderr, "%s is sm_%d%d: the 1-bit AND MMA needs sm_80 or newer\n", prop.name, prop.major, prop.minor);
    return 1;
  }
  const int blocks = prop.multiProcessorCount * blocks_per_sm;
  int* sink = nullptr;
  check(cudaMalloc(&sink, sizeof(int) * blocks * kThreads), "cudaMalloc");
  const double b1 = tops<Kind::B1AndPopc>(blocks, iterations, sink, 2.0 * 16 * 8 * 256);
  const double s8 = tops<Kind::S8>(blocks, iterations, sink, 2.0 * 16 * 8 * 32);
  std::printf("device: %s (sm_%d%d, %d SMs), %d blocks x %d threads, %d iterations x %d chains\n", prop.name,
              prop.major, prop.minor, prop.multiProcessorCount, blocks, kThreads, iterations, kChains);
  std::printf("mma.m16n8k256.b1.and.popc: %10.1f TOPS\n", b1);
  std::printf("mma.m16n8k32.s8:           %10.1f TOPS\n", s8);
  std::printf("b1 / s8:                   %10.2f\n", b1 / s8);
  cudaFree(sink);
  return 0;
}
