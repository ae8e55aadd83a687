// The Python module hidiff_kernels._C: loading it registers the CPU kernels (ops_cpu.cpp); these
// functions report and select the popcount instruction set.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <ATen/Parallel.h>

#include <atomic>
#include <map>
#include <stdexcept>
#include <string>

#include "../core/conv_timing.h"
#include "../core/cpu_features.h"
#include "../core/popcount_peak.h"
#include "output_cache.h"

#ifndef HIDIFF_TORCH_VERSION
#define HIDIFF_TORCH_VERSION "unknown"
#endif

namespace py = pybind11;
using namespace hidiff::core;

PYBIND11_MODULE(_C, m) {
  m.doc() = "Compiled kernels of hidiff_kernels (CPU popcount paths and their selection).";
  m.attr("torch_version") = HIDIFF_TORCH_VERSION;
#ifdef HIDIFF_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.def(
      "cpu_features",
      [] {
        const CpuFeatures& f = cpu_features();
        return std::map<std::string, bool>{{"popcnt", f.popcnt},
                                           {"avx2", f.avx2},
                                           {"avx512f", f.avx512f},
                                           {"avx512bw", f.avx512bw},
                                           {"avx512vpopcntdq", f.avx512vpopcntdq}};
      },
      "CPU features detected at load time.");
  m.def(
      "supported_isas",
      [] {
        py::list names;
        for (Isa isa : {Isa::Portable, Isa::Avx2, Isa::Avx512})
          if (isa_supported(isa)) names.append(isa_name(isa));
        return names;
      },
      "Popcount paths this CPU can run, weakest first.");
  m.def("active_isa", [] { return std::string(isa_name(active_isa())); }, "Popcount path used now.");
  m.def(
      "set_isa",
      [](const std::string& name) {
        Isa isa;
        if (!parse_isa(name, &isa))
          throw py::value_error("isa must be one of 'portable', 'avx2', 'avx512', got '" + name + "'");
        if (!set_active_isa(isa)) throw py::value_error("isa '" + name + "' is not supported by this CPU");
      },
      py::arg("isa"), "Forces a popcount path (for tests and benchmarks).");
  m.def(
      "clear_output_cache", [] { hidiff::OutputCache::instance().clear(); },
      "Frees the cached blocks of large float outputs (outputs still alive return theirs when released).");
  m.def(
      "set_output_cache_limit",
      [](int64_t bytes) {
        if (bytes < 0) throw py::value_error("bytes must be non-negative, got " + std::to_string(bytes));
        hidiff::OutputCache::instance().set_limit(static_cast<size_t>(bytes));
      },
      py::arg("bytes"), "Sets the most bytes the output cache keeps (least recently released blocks go first).");
  m.def(
      "output_cache_limit", [] { return hidiff::OutputCache::instance().limit(); },
      "The most bytes the output cache keeps.");
  m.def(
      "output_cache_blocks", [] { return hidiff::OutputCache::instance().cached_blocks(); },
      "Byte sizes of the cached output blocks, most recently released first.");
  m.def(
      "popcount_peak",
      [](int64_t iterations) {
        if (iterations <= 0) throw py::value_error("iterations must be positive, got " + std::to_string(iterations));
        uint64_t checksum = 0;
        int64_t bits;
        {
          py::gil_scoped_release release;
          bits = popcount_peak(iterations, &checksum);
        }
        return py::make_tuple(bits, checksum);
      },
      py::arg("iterations"),
      "Runs the register-only XOR + popcount + add loop of the active path on this thread; returns "
      "(binary MACs performed, checksum). Time it to get the per-core popcount limit.");
  m.def(
      "popcount_peak_all_threads",
      [](int64_t iterations) {
        if (iterations <= 0) throw py::value_error("iterations must be positive, got " + std::to_string(iterations));
        const int64_t threads = at::get_num_threads();
        std::atomic<int64_t> bits{0};
        {
          py::gil_scoped_release release;
          // One chunk per thread, all at once: the limit of the threads together, which is less than
          // threads x the per-core limit when they share a core's execution ports.
          at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
            uint64_t checksum = 0;
            for (int64_t i = begin; i < end; ++i) bits += popcount_peak(iterations, &checksum);
          });
        }
        return bits.load();
      },
      py::arg("iterations"),
      "Runs the register-only loop of popcount_peak `iterations` times on each of torch's threads at once; "
      "returns the binary MACs performed in all. Time it to get the limit of all threads together.");
  m.def(
      "conv_stage_times",
      [](int64_t in_channels, int64_t out_channels, int64_t height, int64_t width, int64_t kernel, int64_t stride,
         int64_t padding, int64_t reps) {
        if (in_channels <= 0 || out_channels <= 0 || height <= 0 || width <= 0 || kernel <= 0 || stride <= 0 ||
            padding < 0 || reps <= 0)
          throw py::value_error("conv_stage_times needs positive sizes, stride and reps and a non-negative padding");
        const ConvShape s{1, height, width, in_channels, out_channels, kernel, kernel, stride, stride,
                          padding, padding, 1, 1};
        if (s.out_h() <= 0 || s.out_w() <= 0) throw py::value_error("conv_stage_times: the output would be empty");
        ConvStageTimes t;
        {
          py::gil_scoped_release release;
          t = time_conv_stages(s, static_cast<int>(reps));
        }
        return std::map<std::string, double>{{"plan_build", t.plan_build},
                                             {"plan_cached", t.plan_cached},
                                             {"weights", t.weights},
                                             {"input", t.input},
                                             {"tiles", t.tiles}};
      },
      py::arg("in_channels"), py::arg("out_channels"), py::arg("height"), py::arg("width"), py::arg("kernel"),
      py::arg("stride"), py::arg("padding"), py::arg("reps"),
      "Microseconds per call of each stage of a batch-1 binary convolution (plan_build, plan_cached, weights, "
      "input, tiles) on this thread, without torch, on random operands (median of 7 rounds of `reps` calls).");
}
