// The native shared trigger matcher: the same trie automaton as walle_stream/automaton.py (see
// the semantics in walle_stream/pattern.py), over integer ids interned on the Python side.
//
// Ids: event types, pages and attribute values are dense ids (-1: "not named by any condition",
// which satisfies no condition); attribute names are columns of the per-event value table. An
// element's condition (type, optional page, attribute equalities) is one *predicate*; an edge of
// the trie is (contiguity, predicate), so a node has at most one child per predicate and
// contiguity. Per event the matcher finds the few predicates the event satisfies by hashing its
// values once per condition shape of its type, then follows only the edges labelled with those
// predicates: per key, waiting partial matches are indexed by the predicate of the edge they
// wait on, not by event type, so a partial match whose next step names another product costs
// nothing on this event.
#pragma once

#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "int_map.hpp"

namespace walle_stream {

// Thrown for every bad id, size or value coming from Python (surfaces as ValueError).
struct MatcherError : std::invalid_argument {
  explicit MatcherError(const std::string& what) : std::invalid_argument("[stream] " + what) {}
};

// A partial match: the ordinal of the event it started on and the key's clock at that event.
struct Start {
  int64_t seq = 0;
  int64_t clock = 0;
};

// A trigger as its terminal node sees it: copied from TriggerInfo so the firing check reads
// one place.
struct TriggerRef {
  int32_t id;
  int64_t within;
  int64_t added_at;
};

struct Node {
  int32_t parent = -1;
  bool alive = true;
  // the largest within_ms of the triggers at or below this node: a partial match older than
  // this can complete no trigger
  int64_t max_within = 0;
  std::vector<std::pair<int32_t, int32_t>> relaxed;  // (predicate, child)
  std::vector<std::pair<int32_t, int32_t>> strict;   // (predicate, child)
  IntMap<int32_t> relaxed_index;                      // predicate -> relaxed child
  IntMap<int32_t> strict_index;                       // predicate -> strict child
  std::vector<int32_t> relaxed_types;                 // event types of the relaxed children
  std::vector<TriggerRef> triggers;                   // the triggers ending here
};

// What matching reads of every node an event enters, packed (two per cache line) and with the
// node's triggers in one flat array: the full Node (edge lists and indexes) is ~200 bytes, and
// at 1,000+ triggers reading it for each entered node was the matcher's main cache-miss cost.
// Rebuilt from nodes_ before the next batch after any trie change.
// The current event's candidate for the node lives here too (one cache line per entered node).
struct alignas(64) NodeHot {
  int64_t max_within = 0;
  int32_t first_trigger = 0;  // this node's triggers: hot_triggers_[first, first + n)
  int32_t n_triggers = 0;
  bool relaxed = false;  // has relaxed children: a match here waits
  bool strict = false;   // has strict children: a match here is fresh for the next event
  uint64_t epoch = 0;    // == Matcher::epoch_: entered by the current event, with this best start
  Start start;
};

// A node with more relaxed children than this waits in its key's by-type list (one entry per
// event type of its children, the children found by a lookup per matched predicate), not in
// one list per child's predicate: activating a node then costs at most one entry per event
// type, while a node with few children keeps the exact index that costs nothing on events it
// cannot use. Measured on the `python -m walle_stream.bench` workload (best CPU time of a few
// runs, loaded machine), events/s at 1,000 / 10,000 triggers: 4: 1.15 M / 0.17 M, 16: 1.21-1.24
// M / 0.22 M, 64: 1.10-1.13 M / 0.22-0.24 M, never by type: 1.09-1.10 M / 0.18 M.
constexpr size_t kBroadFanout = 16;

struct TriggerInfo {
  int32_t node = -1;
  int64_t within = 0;
  int64_t added_at = 0;  // ordinal at registration: only matches starting later count
  bool alive = false;
};

// The predicates of one event type that test the same fields (page or not, which columns),
// found by hashing the event's values for those fields.
struct Shape {
  bool page = false;
  std::vector<int32_t> cols;
  struct Entry {
    std::vector<int32_t> key;  // [page?] + values
    int32_t pred;
    int32_t next;  // the next entry with the same hash, or -1
  };
  std::vector<Entry> entries;
  FlatMap<uint64_t, int32_t> table;  // hash of the key -> first entry
};

struct TypeIndex {
  int32_t plain = -1;  // the predicate "type only", if any
  std::vector<Shape> shapes;
};

// An entry of a key's active partial matches; slots are stable while the node stays active so
// the waiting lists can point at them. node == -1: a free slot. `max_within` is the node's,
// copied here because the waiting loop reads it for every entry (a trie change re-indexes
// every key, which refreshes it).
struct Slot {
  int32_t node = -1;
  uint32_t gen = 0;      // bumped when the slot is freed: older waiting entries are stale
  int32_t entries = 0;   // waiting entries it made
  int64_t max_within = 0;
  Start start;
};

// "The partial match in `slot` continues into `child` on this predicate" (child -1 in the
// by-type lists: look the child up by the matched predicates). Dropping a node
// does not search its entries out of the lists (a popular node waits on hundreds of
// predicates); they go stale and are removed when met, or all at once by a rebuild.
struct WaitEntry {
  int32_t slot;
  uint32_t gen;
  int32_t child;
};

struct KeyState {
  bool used = false;
  int64_t clock = -1;
  uint64_t version = 0;
  std::vector<Slot> slots;
  std::vector<int32_t> free_slots;
  IntMap<int32_t> slot_of;                          // node -> slot
  IntMap<std::vector<WaitEntry>> waiting;           // predicate -> entries (lists stay once made)
  IntMap<std::vector<WaitEntry>> waiting_broad;     // event type -> entries of broad nodes
  std::vector<std::pair<int32_t, Start>> fresh;     // nodes reached by the previous event
  IntMap<int64_t> last_fire;                        // trigger -> ordinal of its last firing
  int64_t live_entries = 0;                         // waiting entries of active slots
  int64_t stale_entries = 0;                        // waiting entries left by dropped slots
  size_t active() const { return slot_of.size(); }
};

// One event, as ids. `vals` points at `n_cols` attribute value ids.
struct EventIds {
  int32_t key;
  int64_t ts;
  int32_t type;
  int32_t page;
  const int32_t* vals;
};

// What the matching did since the counters were last reset: the cost structure behind the
// throughput (the benchmark prints them per event).
struct MatchCounters {
  int64_t events = 0;
  int64_t scanned = 0;   // waiting entries visited (stale and expired ones included)
  int64_t advances = 0;  // partial matches offered to a child node (from the root, waiting or fresh)
  int64_t entered = 0;   // distinct nodes entered (after keeping the best start per node)
  int64_t checks = 0;    // trigger checks at the entered nodes
  int64_t fires = 0;
};

// A key's state in plain form, for durable state and for moving keys between matchers.
struct KeyDump {
  int64_t clock = -1;
  std::vector<std::tuple<int32_t, int64_t, int64_t>> active;  // (node, start seq, start clock)
  std::vector<std::tuple<int32_t, int64_t, int64_t>> fresh;
  std::vector<std::pair<int32_t, int64_t>> last_fire;         // (trigger, seq)
};

// How a node or trigger is named in saved state: `sort` orders entries (UTF-8 bytes, so code
// point order, as Python sorts str), `json` is the name as a JSON string literal.
struct Label {
  std::string sort;
  std::string json;
  bool set = false;
};

class Matcher {
 public:
  Matcher();

  // -- vocabulary and trie (the Python side owns the names; these calls only check ids) -------
  void set_vocab(int32_t n_types, int32_t n_pages, int32_t n_values, int32_t n_cols);
  int32_t add_pred(int32_t type, int32_t page, const std::vector<int32_t>& cols, const std::vector<int32_t>& vals);
  int32_t add_node(int32_t parent, bool strict, int32_t pred);
  void remove_node(int32_t node);
  int32_t add_trigger(int32_t node, int64_t within);
  void remove_trigger(int32_t trigger);

  // -- matching ---------------------------------------------------------------------------
  void resize_keys(int64_t n);
  // Checks every id of the batch, then advances the keys' state (key by key, each key's events
  // in order: the same result as event by event); appends the firings as (index in the batch,
  // trigger id), in event order.
  void process(int64_t n, const int32_t* keys, const int64_t* ts, const int32_t* types, const int32_t* pages,
               const int32_t* vals, int64_t n_cols, std::vector<int64_t>& fire_event,
               std::vector<int32_t>& fire_trigger);

  // -- bounded and durable state ----------------------------------------------------------
  // Drops partial matches no event with a clock >= horizon can complete; forgets keys left
  // empty. Returns the changed keys and, per changed key, whether it was forgotten.
  std::vector<std::pair<int32_t, bool>> evict(int64_t horizon, const std::vector<int32_t>* only);
  bool has_key(int32_t key);
  KeyDump dump_key(int32_t key);
  // The key's state as the JSON text `json.dumps(NativeAutomaton.dump_key(key),
  // separators=(",", ":"))` would give, built here to spare a commit the Python objects;
  // false when the key holds no state. Every node and trigger in it needs a label.
  bool dump_key_json(int32_t key, std::string& out);
  void set_node_label(int32_t node, std::string sort, std::string json);
  void set_trigger_label(int32_t trigger, std::string sort, std::string json);
  void load_key(int32_t key, const KeyDump& dump);
  void forget_key(int32_t key);
  int64_t ordinal();
  void set_ordinal(int64_t ordinal);
  int64_t added_at(int32_t trigger);
  void set_added_at(int32_t trigger, int64_t ordinal);
  int64_t state_size();
  MatchCounters counters();
  void reset_counters();
  int64_t key_count();
  int64_t node_count();

 private:
  void check_node(int32_t node, const char* what) const;
  void check_key(int64_t key) const;
  void update_max_within(int32_t node);
  void rebuild_hot();
  void match_preds(const EventIds& e);
  void step(const EventIds& e, int64_t index, int64_t seq, std::vector<int64_t>& fire_event,
            std::vector<int32_t>& fire_trigger);
  void group_by_key(int64_t n, const int32_t* keys);
  void reindex(KeyState& ks);
  void rebuild_waiting(KeyState& ks);
  void register_slot(KeyState& ks, int32_t slot);
  void index_edges(int32_t node);
  void scan(KeyState& ks, std::vector<WaitEntry>& list, int64_t clock, bool broad);
  void activate(KeyState& ks, int32_t node, Start start);
  void drop(KeyState& ks, int32_t node);
  KeyState& touch(int32_t key);
  void offer(int32_t child, Start start);

  std::mutex mu_;  // one caller at a time: process() runs without the GIL
  int32_t n_types_ = 0, n_pages_ = 0, n_values_ = 0, n_cols_ = 0;
  std::vector<TypeIndex> types_;
  std::vector<std::pair<int32_t, std::vector<int32_t>>> preds_;  // predicate -> (type, [page?, values])
  std::vector<Node> nodes_;                                       // node 0 is the root
  std::vector<TriggerInfo> triggers_;
  std::vector<NodeHot> hot_;               // by node id, see NodeHot
  std::vector<TriggerRef> hot_triggers_;
  bool hot_stale_ = true;
  std::vector<Label> node_labels_;     // by node id
  std::vector<Label> trigger_labels_;  // by trigger id
  std::vector<KeyState> keys_;
  int64_t n_keys_ = 0;      // keys holding state
  uint64_t version_ = 1;    // bumped on every trie change; keys re-index lazily
  int64_t ordinal_ = 0;     // events processed
  // per-event scratch
  std::vector<int32_t> matched_;
  std::vector<int32_t> scratch_vals_;
  std::vector<int32_t> cands_;
  std::vector<int32_t> expired_;
  std::vector<int64_t> order_;           // a batch's event indices grouped by key
  std::vector<int64_t> g_ts_;            // its timestamps in that order
  std::vector<int32_t> g_ids_;           // its (key, type, page, values...) rows in that order
  std::vector<int64_t> grouped_event_;   // its firings in that order
  std::vector<int32_t> grouped_trigger_;
  uint64_t epoch_ = 0;
  MatchCounters counters_;
};

}  // namespace walle_stream
