// Begin/end a region of functions compiled for a given instruction set, for GCC and Clang.
// Standard headers must be included before HIDIFF_TARGET_BEGIN so that only this file's own
// functions get the target.
#pragma once

#define HIDIFF_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define HIDIFF_TARGET_BEGIN(isa) HIDIFF_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define HIDIFF_TARGET_END HIDIFF_PRAGMA(clang attribute pop)
#else
#define HIDIFF_TARGET_BEGIN(isa) HIDIFF_PRAGMA(GCC push_options) HIDIFF_PRAGMA(GCC target(isa))
#define HIDIFF_TARGET_END HIDIFF_PRAGMA(GCC pop_options)
#endif
