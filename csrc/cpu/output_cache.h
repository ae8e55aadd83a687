// Large float outputs of the CPU kernels come from a small cache of blocks released by earlier
// outputs of the same size.
//
// Why: glibc serves allocations of 32 MiB and more with a fresh mmap each time, so every such
// output pays one page fault per 4 KiB page on first touch: about 10 ms for a 128 x 256 x 256
// float32 map on this class of machine, as long as the 3x3 binary convolution that fills it. A
// network calls the same layers with the same shapes over and over (a diffusion refiner, every
// step), so a block freed by one call is exactly the size the next call needs.
//
// The cache is the allocator of the outputs' storages, so an output is an ordinary resizable
// tensor: `out=` arguments and `resize_` reallocate it through the cache, and every block goes
// back to the cache when its storage dies. Blocks are matched by exact byte size; only blocks of
// at least kMinBytes are cached (smaller ones are reused by malloc's own free lists). The cache
// holds at most limit() bytes: a released block that does not fit evicts the least recently
// released ones. clear() frees every cached block.
//
// Blocks of kMinBytes and more are mappings of their own (mmap/munmap), not heap memory: glibc
// raises its mmap threshold to the size of each mapped block it frees, after which such blocks come
// from the heap, where blocks of many different sizes fragment it (outputs of 8-11 MiB of varied
// widths took a process to 1.3-2 GiB with at most 512 MiB cached, and nothing went back to the OS
// on clear()). A mapping returns its pages to the system when it is freed, so the footprint is
// the live outputs plus at most limit() bytes, and clear() gives the cached bytes back.
#pragma once

#include <sys/mman.h>

#include <ATen/ATen.h>
#include <c10/core/Allocator.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <list>
#include <map>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

namespace hidiff {

class OutputCache final : public c10::Allocator {
 public:
  static constexpr size_t kMinBytes = size_t{8} << 20;
  static constexpr size_t kDefaultLimitBytes = size_t{512} << 20;
  static constexpr size_t kAlignment = 64;

  // The process-wide cache. Never destroyed: tensors may outlive static destruction at exit.
  static OutputCache& instance() {
    static OutputCache* cache = new OutputCache();
    return *cache;
  }

  // An uninitialised, contiguous float32 CPU tensor of the given sizes whose storage is served by
  // (and resizable through) this cache.
  at::Tensor empty_float(at::IntArrayRef sizes) {
    const auto options = at::TensorOptions().dtype(at::kFloat).device(at::kCPU);
    size_t numel = 1;
    for (const int64_t s : sizes) numel *= static_cast<size_t>(s);
    const size_t bytes = numel * sizeof(float);
    if (bytes < kMinBytes) return at::empty(sizes, options);
    c10::Storage storage(c10::Storage::use_byte_size_t(), bytes, allocate(bytes), this, /*resizable=*/true);
    return at::empty({0}, options).set_(std::move(storage), 0, sizes);
  }

  c10::DataPtr allocate(size_t bytes) override {
    void* block = bytes >= kMinBytes ? take(bytes) : nullptr;
    if (block == nullptr) block = fresh(bytes);
    return {block, new Block{this, block, bytes}, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    if (count > 0) std::memcpy(dest, src, count);
  }

  // Frees every cached block (blocks held by live tensors return to the cache when released).
  void clear() {
    std::list<Entry> dropped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      dropped.swap(recency_);
      by_size_.clear();
      cached_bytes_ = 0;
    }
    discard(dropped);
  }

  // Sets the most bytes the cache keeps (evicting the least recently released blocks beyond it).
  void set_limit(size_t bytes) {
    std::list<Entry> dropped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      limit_ = bytes;
      evict_to(limit_, dropped);
    }
    discard(dropped);
  }

  size_t limit() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return limit_;
  }

  // Byte sizes of the cached blocks, most recently released first.
  std::vector<size_t> cached_blocks() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<size_t> sizes;
    for (const Entry& entry : recency_) sizes.push_back(entry.bytes);
    return sizes;
  }

 private:
  struct Block {
    OutputCache* cache;
    void* block;
    size_t bytes;
  };
  struct Entry {
    void* block;
    size_t bytes;
  };

  static void release(void* context) {
    const Block* b = static_cast<Block*>(context);
    b->cache->give(b->block, b->bytes);
    delete b;
  }

  static void* fresh(size_t bytes) {
    if (bytes >= kMinBytes) {
      // Page-aligned, so also kAlignment-aligned.
      void* block = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (block == MAP_FAILED) throw std::bad_alloc();
      return block;
    }
    const size_t rounded = (std::max<size_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
    void* block = std::aligned_alloc(kAlignment, rounded);
    if (block == nullptr) throw std::bad_alloc();
    return block;
  }

  // Frees a block made by fresh(bytes).
  static void discard(void* block, size_t bytes) {
    if (block == nullptr) return;
    if (bytes >= kMinBytes) {
      munmap(block, bytes);
    } else {
      std::free(block);
    }
  }

  static void discard(const std::list<Entry>& entries) {
    for (const Entry& entry : entries) discard(entry.block, entry.bytes);
  }

  // A cached block of exactly `bytes`, or nullptr.
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = by_size_.find(bytes);
    if (it == by_size_.end()) return nullptr;
    const auto entry = it->second;
    void* block = entry->block;
    by_size_.erase(it);
    recency_.erase(entry);
    cached_bytes_ -= bytes;
    return block;
  }

  void give(void* block, size_t bytes) {
    std::list<Entry> dropped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (bytes >= kMinBytes && bytes <= limit_) {
        evict_to(limit_ - bytes, dropped);
        recency_.push_front(Entry{block, bytes});
        by_size_.emplace(bytes, recency_.begin());
        cached_bytes_ += bytes;
        block = nullptr;
      }
    }
    discard(dropped);
    discard(block, bytes);
  }

  // Moves the least recently released blocks into `dropped` until at most `bytes` stay cached.
  void evict_to(size_t bytes, std::list<Entry>& dropped) {
    while (cached_bytes_ > bytes) {
      const auto oldest = std::prev(recency_.end());
      const auto range = by_size_.equal_range(oldest->bytes);
      for (auto it = range.first; it != range.second; ++it) {
        if (it->second == oldest) {
          by_size_.erase(it);
          break;
        }
      }
      cached_bytes_ -= oldest->bytes;
      dropped.splice(dropped.end(), recency_, oldest);
    }
  }

  mutable std::mutex mutex_;
  std::list<Entry> recency_;                                        // most recently released first
  std::multimap<size_t, std::list<Entry>::iterator> by_size_;  // the same blocks by byte size
  size_t cached_bytes_ = 0;
  size_t limit_ = kDefaultLimitBytes;
};

}  // namespace hidiff
