// Runtime facts about the CUDA side of the build. Defined in cuda_info.cu when CUDA is
// compiled in; the CPU-only build never calls them (see bindings.cpp).
#pragma once

namespace resid {
// Number of usable CUDA devices; 0 when no driver or device is present (never throws).
int cuda_device_count();
}  // namespace resid
