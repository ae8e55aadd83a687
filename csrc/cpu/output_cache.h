// Large float outputs of the CPU kernels come from a small cache of blocks released by earlier
// outputs of the same size.
//
// Why: glibc serves allocations of 32 MiB and more with a fresh mmap each time, so every such
// output pays one page fault per 4 KiB page on first touch: about 10 ms for a 128 x 256 x 256
// float32 map on this class of machine, as long as the 3x3 binary convolution that fills it. A
// network calls the same layers with the same shapes over and over (a diffusion refiner, every
// step), so a block freed by one call is exactly the size the next call needs.
//
// Blocks are matched by exact byte size, kept up to kMaxCachedBytes in total (beyond that they
// are freed), and returned to the cache by the tensor's deleter. Only blocks of at least
// kMinBytes are cached: smaller ones are reused by malloc's own free lists.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>

namespace hidiff {

class OutputCache {
 public:
  static constexpr size_t kMinBytes = size_t{8} << 20;
  static constexpr size_t kMaxCachedBytes = size_t{512} << 20;
  static constexpr size_t kAlignment = 64;

  // The process-wide cache. Never destroyed: tensors may outlive static destruction at exit.
  static OutputCache& instance() {
    static OutputCache* cache = new OutputCache();
    return *cache;
  }

  // An uninitialised float32 CPU tensor of the given sizes, contiguous.
  at::Tensor empty_float(at::IntArrayRef sizes) {
    const auto options = at::TensorOptions().dtype(at::kFloat).device(at::kCPU);
    size_t numel = 1;
    for (const int64_t s : sizes) numel *= static_cast<size_t>(s);
    const size_t bytes = numel * sizeof(float);
    if (bytes < kMinBytes) return at::empty(sizes, options);
    void* block = take(bytes);
    return at::from_blob(
        block, sizes, [this, bytes](void* p) { give(p, bytes); }, options);
  }

 private:
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto it = free_.find(bytes);
      if (it != free_.end()) {
        void* block = it->second;
        free_.erase(it);
        cached_bytes_ -= bytes;
        return block;
      }
    }
    const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    void* block = std::aligned_alloc(kAlignment, rounded);
    if (block == nullptr) throw std::bad_alloc();
    return block;
  }

  void give(void* block, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_bytes_ + bytes <= kMaxCachedBytes) {
        free_.emplace(bytes, block);
        cached_bytes_ += bytes;
        return;
      }
    }
    std::free(block);
  }

  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t cached_bytes_ = 0;
};

}  // namespace hidiff
