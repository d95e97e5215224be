#include "isa.hpp"

#include "common.hpp"

namespace walle {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "portable";
  }
}

Isa best_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
  return Isa::kPortable;
}

Isa choose_isa(const std::string& requested) {
  Isa best = best_isa();
  if (requested.empty()) return best;
  Isa want;
  if (requested == "portable") want = Isa::kPortable;
  else if (requested == "avx2") want = Isa::kAvx2;
  else if (requested == "avx512") want = Isa::kAvx512;
  else throw Error("unknown ISA '" + requested + "' (expected portable, avx2 or avx512)");
  require(static_cast<int>(want) <= static_cast<int>(best),
          std::string("ISA '") + requested + "' is not supported by this CPU (best: " + isa_name(best) + ")");
  return want;
}

}  // namespace walle
