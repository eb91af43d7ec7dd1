#pragma once
// The emulators' calling convention (tests/cuda_emulator/__init__.py marshals it): a kernel's params
// arrive field by field by name ("name=value[,value...]"), so a field added to, moved in or removed
// from a params struct cannot be filled by position into the wrong member; the inputs arrive as
// (address, bytes) ranges, the memory the emulated kernels may read. Each emulator lists its params'
// fields with FIELD.

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda_emulator/cta.h"

namespace emu {

using Values = std::vector<std::string>;  // one field's comma-separated values

inline int64_t parse_int(const std::string& s) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno != 0) throw std::runtime_error("'" + s + "' is not an integer");
  return v;
}

inline double parse_double(const std::string& s) {
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

// The memory the emulated kernels may read: n (address, bytes) pairs.
inline void set_ranges(const int64_t* ranges, int n) {
  fasttx::global_ranges.clear();
  for (int i = 0; i < n; ++i) {
    fasttx::global_ranges.push_back(
        {reinterpret_cast<const char*>(ranges[2 * i]), static_cast<size_t>(ranges[2 * i + 1])});
  }
}

// An entry point's result: nullptr once body has run, or why it threw (kept until the next failure).
template <typename Body>
const char* error_or_null(Body&& body) {
  static std::string error;
  try {
    body();
    return nullptr;
  } catch (const std::runtime_error& e) {
    error = e.what();
    return error.c_str();
  }
}

}  // namespace emu
