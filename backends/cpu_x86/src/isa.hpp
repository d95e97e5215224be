// Run-time choice of the instruction set. The module itself is built for baseline x86-64;
// wider kernels live in their own translation units and are only called after these checks.
#pragma once

#include <string>

namespace walle {

enum class Isa : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

const char* isa_name(Isa isa);

// The best level this CPU supports (AVX2 requires FMA as well).
Isa best_isa();

// The level to compile a plan for: `requested` ("" = best, else portable|avx2|avx512, e.g. from
// WALLE_CPU_X86_ISA) may only lower the level; asking for more than the CPU has is an error.
Isa choose_isa(const std::string& requested);

}  // namespace walle
