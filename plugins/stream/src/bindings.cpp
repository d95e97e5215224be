// The Python face of the native matcher (walle_stream._ext). Only ids and NumPy arrays cross
// this boundary; walle_stream/native.py interns names and keeps the trie's Python mirror. Bad
// ids and sizes surface as ValueError (MatcherError), wrong dtypes/shapes as TypeError.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <optional>

#include "matcher.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace walle_stream {

namespace {

using I32 = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using I64 = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using I32x2 = nb::ndarray<const int32_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using Entry = std::tuple<int32_t, int64_t, int64_t>;

// Hands a vector to NumPy without a copy; the capsule frees it with the array.
template <class T>
nb::ndarray<nb::numpy, T, nb::ndim<1>> to_numpy(std::vector<T>&& values) {
  auto* heap = new std::vector<T>(std::move(values));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T, nb::ndim<1>>(heap->data(), {heap->size()}, owner);
}

void require_rows(size_t n, size_t got, const char* name) {
  if (got != n)
    throw MatcherError(std::string("process: '") + name + "' has " + std::to_string(got) + " rows, 'keys' has " +
                       std::to_string(n));
}

}  // namespace

void init_matcher(nb::module_& m) {
  nb::class_<Matcher>(m, "Matcher", "The shared trie matcher over interned ids (see matcher.hpp).")
      .def(nb::init<>())
      .def("set_vocab", &Matcher::set_vocab, "n_types"_a, "n_pages"_a, "n_values"_a, "n_cols"_a)
      .def("add_pred", &Matcher::add_pred, "type"_a, "page"_a, "cols"_a, "vals"_a)
      .def("add_node", &Matcher::add_node, "parent"_a, "strict"_a, "pred"_a)
      .def("remove_node", &Matcher::remove_node, "node"_a)
      .def("add_trigger", &Matcher::add_trigger, "node"_a, "within_ms"_a)
      .def("remove_trigger", &Matcher::remove_trigger, "trigger"_a)
      .def("resize_keys", &Matcher::resize_keys, "n"_a)
      .def(
          "process",
          [](Matcher& self, I32 keys, I64 ts, I32 types, I32 pages, I32x2 vals) {
            const size_t n = keys.shape(0);
            require_rows(n, ts.shape(0), "ts");
            require_rows(n, types.shape(0), "types");
            require_rows(n, pages.shape(0), "pages");
            require_rows(n, vals.shape(0), "vals");
            std::vector<int64_t> fire_event;
            std::vector<int32_t> fire_trigger;
            {
              nb::gil_scoped_release release;
              self.process(static_cast<int64_t>(n), keys.data(), ts.data(), types.data(), pages.data(), vals.data(),
                           static_cast<int64_t>(vals.shape(1)), fire_event, fire_trigger);
            }
            return std::make_pair(to_numpy(std::move(fire_event)), to_numpy(std::move(fire_trigger)));
          },
          // no implicit dtype conversion: a silently narrowed id would be a wrong id
          "keys"_a.noconvert(), "ts"_a.noconvert(), "types"_a.noconvert(), "pages"_a.noconvert(),
          "vals"_a.noconvert(),
          "Advance the matcher by a batch of events (int32 key/type/page ids, int64 ts, int32 value ids "
          "[n, n_cols]); returns (event index, trigger id) arrays of the firings in event order.")
      .def(
          "process_one",
          [](Matcher& self, int32_t key, int64_t ts, int32_t type, int32_t page, const std::vector<int32_t>& vals) {
            std::vector<int64_t> fire_event;
            std::vector<int32_t> fire_trigger;
            {
              nb::gil_scoped_release release;
              self.process(1, &key, &ts, &type, &page, vals.data(), static_cast<int64_t>(vals.size()), fire_event,
                           fire_trigger);
            }
            return fire_trigger;
          },
          "key"_a, "ts"_a, "type"_a, "page"_a, "vals"_a, "One event; returns the ids of the triggers that fire.")
      .def(
          "evict",
          [](Matcher& self, int64_t horizon, std::optional<std::vector<int32_t>> keys) {
            nb::gil_scoped_release release;
            return self.evict(horizon, keys ? &*keys : nullptr);
          },
          "horizon"_a, "keys"_a = nb::none(), "Returns [(key id, forgotten)] for every key whose state changed.")
      .def(
          "dump_key",
          [](Matcher& self, int32_t key) -> nb::object {
            if (!self.has_key(key)) return nb::none();
            KeyDump d = self.dump_key(key);
            return nb::make_tuple(d.clock, d.active, d.fresh, d.last_fire);
          },
          "key"_a, "(clock, [(node, seq, clock)] active, [...] fresh, [(trigger, seq)] last firings) or None")
      .def(
          "load_key",
          [](Matcher& self, int32_t key, int64_t clock, std::vector<Entry> active, std::vector<Entry> fresh,
             std::vector<std::pair<int32_t, int64_t>> last_fire) {
            KeyDump d;
            d.clock = clock;
            d.active = std::move(active);
            d.fresh = std::move(fresh);
            d.last_fire = std::move(last_fire);
            self.load_key(key, d);
          },
          "key"_a, "clock"_a, "active"_a, "fresh"_a, "last_fire"_a)
      .def(
          "dump_key_json",
          [](Matcher& self, int32_t key) -> nb::object {
            std::string out;
            bool held = false;
            {
              nb::gil_scoped_release release;
              held = self.dump_key_json(key, out);
            }
            if (!held) return nb::none();
            return nb::str(out.data(), out.size());
          },
          "key"_a, "The key's state as compact JSON text (see matcher.hpp), or None")
      .def(
          "set_node_label",
          [](Matcher& self, int32_t node, nb::bytes sort, std::string json) {
            self.set_node_label(node, std::string(sort.c_str(), sort.size()), std::move(json));
          },
          "node"_a, "sort"_a, "json"_a, "sort: the name's UTF-8 bytes (the order of entries); json: the name as JSON")
      .def(
          "set_trigger_label",
          [](Matcher& self, int32_t trigger, nb::bytes sort, std::string json) {
            self.set_trigger_label(trigger, std::string(sort.c_str(), sort.size()), std::move(json));
          },
          "trigger"_a, "sort"_a, "json"_a)
      .def("forget_key", &Matcher::forget_key, "key"_a)
      .def_prop_rw("ordinal", &Matcher::ordinal, &Matcher::set_ordinal)
      .def("added_at", &Matcher::added_at, "trigger"_a)
      .def("set_added_at", &Matcher::set_added_at, "trigger"_a, "ordinal"_a)
      .def("state_size", &Matcher::state_size)
      .def(
          "counters",
          [](Matcher& self) {
            const MatchCounters c = self.counters();
            nb::dict out;
            out["events"] = c.events;
            out["scanned"] = c.scanned;
            out["advances"] = c.advances;
            out["entered"] = c.entered;
            out["checks"] = c.checks;
            out["fires"] = c.fires;
            return out;
          },
          "What matching did since the last reset_counters(): events, waiting entries scanned, "
          "partial-match advances, nodes entered, trigger checks, firings.")
      .def("reset_counters", &Matcher::reset_counters)
      .def("key_count", &Matcher::key_count)
      .def("node_count", &Matcher::node_count);
}

}  // namespace walle_stream

NB_MODULE(_ext, m) {
  m.doc() = "Native shared trigger matcher of the Walle stream plugin";
  walle_stream::init_matcher(m);
}
