// The CUDA attention kernels of csrc/attention, compiled for the host: this directory's
// attention/primitives.cuh replaces the real one, and every other line is the real source, launch
// configurations and head-dim dispatch included. Called from tests/test_cuda_attention_emulated.py.

#include "attention/primitives.cuh"  // the emulation (first on the include path)
#include "attention/sm90/primitives_sm90.cuh"  // emulated as sm_80 here (runs_sm90a false): emulator_sm90.cpp runs sm_90a

#include <cerrno>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "attention/attention_launch.cpp"
#include "attention_kernels.inc"  // every generated attention_{fwd,bwd}_hdim*.cu
#include "attention/sm90/attention_fwd_sm90.cu"  // the dispatch names it; never launched here

namespace {

using fasttx::AttentionBwdParams;
using fasttx::AttentionParams;
using Values = std::vector<std::string>;  // one field's comma-separated values

int64_t parse_int(const std::string& s) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno != 0) throw std::runtime_error("'" + s + "' is not an integer");
  return v;
}

double parse_double(const std::string& s) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0') throw std::runtime_error("'" + s + "' is not a number");
  return v;
}

// A field from its values, by the field's type: integers, bools and enums; floats; pointers (an
// address); int64_t arrays (one value per element).
template <typename F>
void assign(F& field, const Values& v) {
  const size_t n = std::is_array_v<F> ? std::extent_v<F> : 1;
  if (v.size() != n) {
    throw std::runtime_error(std::to_string(n) + " value(s) expected, got " + std::to_string(v.size()));
  }
  if constexpr (std::is_array_v<F>) {
    for (size_t i = 0; i < n; ++i) field[i] = parse_int(v[i]);
  } else if constexpr (std::is_pointer_v<F>) {
    field = reinterpret_cast<F>(static_cast<uintptr_t>(parse_int(v[0])));
  } else if constexpr (std::is_floating_point_v<F>) {
    field = static_cast<F>(parse_double(v[0]));
  } else {
    field = static_cast<F>(parse_int(v[0]));
  }
}

template <typename P>
struct Field {
  const char* name;
  void (*set)(P&, const Values&);
};

#define FIELD(P, member) Field<P>{#member, [](P& p, const Values& v) { assign(p.member, v); }}

// Every field of the params, by name (a field added to attention.h goes here too, or it stays 0).
template <typename P>
std::vector<Field<P>> fwd_fields() {
  return {FIELD(P, dtype),        FIELD(P, head_dim),  FIELD(P, batch),      FIELD(P, heads),
          FIELD(P, kv_heads),     FIELD(P, queries),   FIELD(P, keys),       FIELD(P, is_causal),
          FIELD(P, scale_log2),   FIELD(P, scale),     FIELD(P, dropout_p),  FIELD(P, seed),
          FIELD(P, q),            FIELD(P, k),         FIELD(P, v),          FIELD(P, q_strides),
          FIELD(P, k_strides),    FIELD(P, v_strides), FIELD(P, mask_kind),  FIELD(P, mask_dtype),
          FIELD(P, mask),         FIELD(P, mask_strides), FIELD(P, o),       FIELD(P, lse)};
}

std::vector<Field<AttentionBwdParams>> bwd_fields() {
  using P = AttentionBwdParams;
  std::vector<Field<P>> fields = fwd_fields<P>();
  fields.insert(fields.end(), {FIELD(P, dout), FIELD(P, dout_strides), FIELD(P, o_strides), FIELD(P, delta),
                               FIELD(P, dq), FIELD(P, dk), FIELD(P, dv)});
  return fields;
}

#undef FIELD

// p from "name=value[,value...]" entries: each field of the table exactly once, no other name.
template <typename P>
P params(const std::vector<Field<P>>& table, const char* const* entries, int n) {
  P p{};
  std::vector<bool> given(table.size(), false);
  for (int i = 0; i < n; ++i) {
    const std::string entry = entries[i];
    const size_t eq = entry.find('=');
    const std::string name = entry.substr(0, eq);
    size_t f = 0;
    while (f < table.size() && name != table[f].name) ++f;
    if (eq == std::string::npos || f == table.size()) throw std::runtime_error("unknown field '" + name + "'");
    if (given[f]) throw std::runtime_error("field '" + name + "' given twice");
    Values values;
    for (size_t start = eq + 1, end;; start = end + 1) {
      end = entry.find(',', start);
      values.push_back(entry.substr(start, end - start));
      if (end == std::string::npos) break;
    }
    try {
      table[f].set(p, values);
    } catch (const std::runtime_error& e) {
      throw std::runtime_error("field '" + name + "': " + e.what());
    }
    given[f] = true;
  }
  for (size_t f = 0; f < table.size(); ++f) {
    if (!given[f]) throw std::runtime_error("field '" + std::string(table[f].name) + "' not given");
  }
  return p;
}

}  // namespace

// fields: "name=value" for every field of AttentionParams (AttentionBwdParams when backward), arrays
// as comma-separated values, pointers as addresses; ranges: (address, bytes) of every input. Returns
// nullptr, or why nothing was launched.
extern "C" const char* emu_attention(int backward, const char* const* fields, int n_fields, const int64_t* ranges,
                                     int n_ranges) {
  static std::string error;
  try {
    fasttx::attn::global_ranges.clear();
    for (int i = 0; i < n_ranges; ++i) {
      fasttx::attn::global_ranges.push_back(
          {reinterpret_cast<const char*>(ranges[2 * i]), static_cast<size_t>(ranges[2 * i + 1])});
    }
    const bool launched =
        backward ? fasttx::attention_bwd_launch(params(bwd_fields(), fields, n_fields), nullptr)
                 : fasttx::attention_fwd_launch(params(fwd_fields<AttentionParams>(), fields, n_fields), nullptr);
    if (!launched) throw std::runtime_error("no kernels for this head_dim");
    return nullptr;
  } catch (const std::runtime_error& e) {
    error = e.what();
    return error.c_str();
  }
}
