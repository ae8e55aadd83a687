// Device checks of the ATen glue, shared by the CPU and the CUDA ops (ATen only).
//
// Each op checks that its first tensor is on its backend's device and that every other tensor is
// on that same device, so a kernel never reads memory of another device.
#pragma once

#include <ATen/ATen.h>

namespace hidiff::glue {

inline void check_backend(const at::Tensor& t, const char* name, at::DeviceType backend) {
  TORCH_CHECK_VALUE(t.device().type() == backend, name, " must be a ", c10::DeviceTypeName(backend),
                    " tensor for this kernel, got device ", t.device());
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_VALUE(t.device() == like.device(), name, " must be on the device of ", like_name, " (", like.device(),
                    "), got ", t.device());
}

}  // namespace hidiff::glue
