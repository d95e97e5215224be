#include "matcher.hpp"

#include <algorithm>

namespace walle_stream {

namespace {

// Upper bounds on ids, so a wrong value from Python is an error rather than a huge allocation.
constexpr int64_t kMaxIds = int64_t{1} << 30;
constexpr int64_t kMaxTs = int64_t{1} << 62;
// Batches up to this many events keep their scratch buffers (a few MB) for the next one.
constexpr int64_t kKeptScratch = int64_t{1} << 16;

void require(bool ok, const std::string& what) {
  if (!ok) throw MatcherError(what);
}

// FNV-1a over the ids, then a splitmix64 finaliser so nearby tuples spread over the buckets.
uint64_t hash_ids(const int32_t* v, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= static_cast<uint32_t>(v[i]);
    h *= 1099511628211ull;
  }
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h == ~0ull ? 0 : h;  // all ones marks a free slot in FlatMap
}

}  // namespace

Matcher::Matcher() { nodes_.emplace_back(); }

void Matcher::check_node(int32_t node, const char* what) const {
  require(node >= 0 && node < static_cast<int64_t>(nodes_.size()) && nodes_[node].alive,
          std::string(what) + ": no live trie node " + std::to_string(node));
}

void Matcher::check_key(int64_t key) const {
  require(key >= 0 && key < static_cast<int64_t>(keys_.size()),
          "key id " + std::to_string(key) + " out of range [0, " + std::to_string(keys_.size()) + ")");
}

void Matcher::set_vocab(int32_t n_types, int32_t n_pages, int32_t n_values, int32_t n_cols) {
  std::lock_guard<std::mutex> lock(mu_);
  require(n_types >= n_types_ && n_pages >= n_pages_ && n_values >= n_values_ && n_cols >= n_cols_,
          "set_vocab: the vocabulary only grows");
  require(n_types < kMaxIds && n_pages < kMaxIds && n_values < kMaxIds && n_cols < 4096,
          "set_vocab: vocabulary too large");
  n_types_ = n_types;
  n_pages_ = n_pages;
  n_values_ = n_values;
  n_cols_ = n_cols;
  types_.resize(static_cast<size_t>(n_types));
}

int32_t Matcher::add_pred(int32_t type, int32_t page, const std::vector<int32_t>& cols,
                          const std::vector<int32_t>& vals) {
  std::lock_guard<std::mutex> lock(mu_);
  require(type >= 0 && type < n_types_, "add_pred: type id " + std::to_string(type) + " out of range");
  require(page >= -1 && page < n_pages_, "add_pred: page id " + std::to_string(page) + " out of range");
  require(cols.size() == vals.size(), "add_pred: cols and vals differ in length");
  for (size_t i = 0; i < cols.size(); ++i) {
    require(cols[i] >= 0 && cols[i] < n_cols_, "add_pred: attribute column " + std::to_string(cols[i]) +
                                                   " out of range");
    require(i == 0 || cols[i] > cols[i - 1], "add_pred: attribute columns must be sorted and distinct");
    require(vals[i] >= 0 && vals[i] < n_values_, "add_pred: value id " + std::to_string(vals[i]) +
                                                     " out of range");
  }
  TypeIndex& index = types_[type];
  if (page < 0 && cols.empty()) {
    if (index.plain < 0) {
      index.plain = static_cast<int32_t>(preds_.size());
      preds_.emplace_back(type, std::vector<int32_t>{});
    }
    return index.plain;
  }
  Shape* shape = nullptr;
  for (Shape& s : index.shapes)
    if (s.page == (page >= 0) && s.cols == cols) shape = &s;
  if (shape == nullptr) {
    index.shapes.emplace_back();
    shape = &index.shapes.back();
    shape->page = page >= 0;
    shape->cols = cols;
  }
  std::vector<int32_t> key;
  if (page >= 0) key.push_back(page);
  key.insert(key.end(), vals.begin(), vals.end());
  bool added = false;
  int32_t& head = shape->table.get(hash_ids(key.data(), key.size()), &added);
  if (added) head = -1;
  for (int32_t e = head; e >= 0; e = shape->entries[e].next)
    if (shape->entries[e].key == key) return shape->entries[e].pred;
  const auto pred = static_cast<int32_t>(preds_.size());
  shape->entries.push_back(Shape::Entry{key, pred, head});
  head = static_cast<int32_t>(shape->entries.size()) - 1;
  preds_.emplace_back(type, std::move(key));
  return pred;
}

int32_t Matcher::add_node(int32_t parent, bool strict, int32_t pred) {
  std::lock_guard<std::mutex> lock(mu_);
  check_node(parent, "add_node");
  require(pred >= 0 && pred < static_cast<int64_t>(preds_.size()), "add_node: unknown predicate " +
                                                                        std::to_string(pred));
  require(!(strict && parent == 0), "add_node: a first element cannot be strict");
  require(nodes_.size() < static_cast<size_t>(kMaxIds), "add_node: too many nodes");
  const auto& index = strict ? nodes_[parent].strict_index : nodes_[parent].relaxed_index;
  require(index.find(pred) == nullptr, "add_node: node " + std::to_string(parent) + " already has this child");
  const auto id = static_cast<int32_t>(nodes_.size());
  Node node;
  node.parent = parent;
  nodes_.push_back(std::move(node));
  Node& p = nodes_[parent];
  if (strict) {
    p.strict.emplace_back(pred, id);
    p.strict_index.get(pred) = id;
  } else {
    p.relaxed.emplace_back(pred, id);
    p.relaxed_index.get(pred) = id;
    const int32_t type = preds_[pred].first;
    if (std::find(p.relaxed_types.begin(), p.relaxed_types.end(), type) == p.relaxed_types.end())
      p.relaxed_types.push_back(type);
  }
  ++version_;
  hot_stale_ = true;
  return id;
}

void Matcher::remove_node(int32_t node) {
  std::lock_guard<std::mutex> lock(mu_);
  check_node(node, "remove_node");
  require(node != 0, "remove_node: the root stays");
  Node& n = nodes_[node];
  require(n.relaxed.empty() && n.strict.empty() && n.triggers.empty(),
          "remove_node: node " + std::to_string(node) + " still has children or triggers");
  n.alive = false;
  Node& parent = nodes_[n.parent];
  for (auto* edges : {&parent.relaxed, &parent.strict})
    edges->erase(std::remove_if(edges->begin(), edges->end(), [&](const auto& e) { return e.second == node; }),
                 edges->end());
  index_edges(n.parent);
  update_max_within(n.parent);
  ++version_;
  hot_stale_ = true;
}

int32_t Matcher::add_trigger(int32_t node, int64_t within) {
  std::lock_guard<std::mutex> lock(mu_);
  check_node(node, "add_trigger");
  require(node != 0, "add_trigger: a trigger needs at least one element");
  require(within > 0 && within < kMaxTs, "add_trigger: within_ms must be positive and below 2^62");
  require(triggers_.size() < static_cast<size_t>(kMaxIds), "add_trigger: too many triggers");
  const auto id = static_cast<int32_t>(triggers_.size());
  triggers_.push_back(TriggerInfo{node, within, ordinal_, true});
  nodes_[node].triggers.push_back(TriggerRef{id, within, ordinal_});
  // adding only raises max_within: stop where it no longer changes (recomputing every
  // ancestor would scan the root's children on every registration)
  for (int32_t at = node; at >= 0 && nodes_[at].max_within < within; at = nodes_[at].parent)
    nodes_[at].max_within = within;
  ++version_;
  hot_stale_ = true;
  return id;
}

void Matcher::remove_trigger(int32_t trigger) {
  std::lock_guard<std::mutex> lock(mu_);
  require(trigger >= 0 && trigger < static_cast<int64_t>(triggers_.size()) && triggers_[trigger].alive,
          "remove_trigger: no live trigger " + std::to_string(trigger));
  TriggerInfo& t = triggers_[trigger];
  t.alive = false;
  auto& list = nodes_[t.node].triggers;
  list.erase(std::remove_if(list.begin(), list.end(), [&](const TriggerRef& r) { return r.id == trigger; }),
             list.end());
  update_max_within(t.node);
  ++version_;
  hot_stale_ = true;
}

void Matcher::index_edges(int32_t node) {
  Node& n = nodes_[node];
  n.relaxed_index = IntMap<int32_t>();
  n.strict_index = IntMap<int32_t>();
  n.relaxed_types.clear();
  for (const auto& [pred, child] : n.relaxed) {
    n.relaxed_index.get(pred) = child;
    const int32_t type = preds_[pred].first;
    if (std::find(n.relaxed_types.begin(), n.relaxed_types.end(), type) == n.relaxed_types.end())
      n.relaxed_types.push_back(type);
  }
  for (const auto& [pred, child] : n.strict) n.strict_index.get(pred) = child;
}

void Matcher::rebuild_hot() {
  hot_.assign(nodes_.size(), NodeHot());  // epochs 0: no candidates (epoch_ is >= 1 when used)
  hot_triggers_.clear();
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const Node& n = nodes_[i];
    if (!n.alive) continue;
    NodeHot& h = hot_[i];
    h.max_within = n.max_within;
    h.first_trigger = static_cast<int32_t>(hot_triggers_.size());
    h.n_triggers = static_cast<int32_t>(n.triggers.size());
    h.relaxed = !n.relaxed.empty();
    h.strict = !n.strict.empty();
    hot_triggers_.insert(hot_triggers_.end(), n.triggers.begin(), n.triggers.end());
  }
  hot_stale_ = false;
}

void Matcher::update_max_within(int32_t node) {
  while (node >= 0) {
    Node& n = nodes_[node];
    int64_t best = 0;
    for (const TriggerRef& t : n.triggers) best = std::max(best, t.within);
    for (const auto* edges : {&n.relaxed, &n.strict})
      for (const auto& e : *edges) best = std::max(best, nodes_[e.second].max_within);
    n.max_within = best;
    node = n.parent;
  }
}

void Matcher::resize_keys(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  require(n >= static_cast<int64_t>(keys_.size()) && n < kMaxIds, "resize_keys: bad key count " +
                                                                      std::to_string(n));
  keys_.resize(static_cast<size_t>(n));
}

// -- matching ------------------------------------------------------------------------------

void Matcher::process(int64_t n, const int32_t* keys, const int64_t* ts, const int32_t* types,
                      const int32_t* pages, const int32_t* vals, int64_t n_cols, std::vector<int64_t>& fire_event,
                      std::vector<int32_t>& fire_trigger) {
  std::lock_guard<std::mutex> lock(mu_);
  require(n >= 0, "process: negative batch size");
  require(n_cols == n_cols_, "process: the batch has " + std::to_string(n_cols) + " attribute columns, the "
                                 "matcher " + std::to_string(n_cols_));
  // every id is checked before any state changes, so a bad batch leaves the matcher as it was
  const auto n_keys = static_cast<int64_t>(keys_.size());
  for (int64_t i = 0; i < n; ++i) {
    if (keys[i] < 0 || keys[i] >= n_keys)
      throw MatcherError("process: event " + std::to_string(i) + ": key id " + std::to_string(keys[i]) +
                         " out of range");
    // clock differences must not overflow: |ts| < 2^62 (event time in ms: 146 million years)
    if (ts[i] <= -kMaxTs || ts[i] >= kMaxTs)
      throw MatcherError("process: event " + std::to_string(i) + ": ts " + std::to_string(ts[i]) +
                         " out of range");
    if (types[i] < -1 || types[i] >= n_types_)
      throw MatcherError("process: event " + std::to_string(i) + ": type id " + std::to_string(types[i]) +
                         " out of range");
    if (pages[i] < -1 || pages[i] >= n_pages_)
      throw MatcherError("process: event " + std::to_string(i) + ": page id " + std::to_string(pages[i]) +
                         " out of range");
    for (int64_t c = 0; c < n_cols; ++c) {
      const int32_t v = vals[i * n_cols + c];
      if (v < -1 || v >= n_values_)
        throw MatcherError("process: event " + std::to_string(i) + ": value id " + std::to_string(v) +
                           " of column " + std::to_string(c) + " out of range");
    }
  }
  // Keys never interact: an event's ordinal is only compared with ordinals of the same key (its
  // partial matches and last firings) and with trigger registration ordinals, which are all
  // older than the batch. So the batch is matched key by key, each key's events in their
  // order and with their own ordinals, which keeps one key's state in cache for all its events;
  // the firings are then put back in event order. The result is the event-by-event one.
  if (hot_stale_) rebuild_hot();
  const int64_t base = ordinal_;
  if (n <= 1) {
    for (int64_t i = 0; i < n; ++i)
      step(EventIds{keys[i], ts[i], types[i], pages[i], vals + i * n_cols}, i, base + i + 1, fire_event,
           fire_trigger);
    ordinal_ = base + n;
    return;
  }
  group_by_key(n, keys);
  // copy the events into that order first: a tight loop of independent loads overlaps the
  // cache misses that reading them scattered inside step() would take one at a time
  g_ts_.resize(static_cast<size_t>(n));
  g_ids_.resize(static_cast<size_t>(n) * (3 + n_cols));
  const int64_t width = 3 + n_cols;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t i = order_[j];
    g_ts_[j] = ts[i];
    int32_t* row = g_ids_.data() + j * width;
    row[0] = keys[i];
    row[1] = types[i];
    row[2] = pages[i];
    for (int64_t c = 0; c < n_cols; ++c) row[3 + c] = vals[i * n_cols + c];
  }
  grouped_event_.clear();
  grouped_trigger_.clear();
  for (int64_t j = 0; j < n; ++j) {
    const int32_t* row = g_ids_.data() + j * width;
    const int64_t i = order_[j];
    step(EventIds{row[0], g_ts_[j], row[1], row[2], row + 3}, i, base + i + 1, grouped_event_, grouped_trigger_);
  }
  ordinal_ = base + n;
  // counting sort of the firings by event index; stable, so one event's firings keep their order
  std::vector<int64_t> first(static_cast<size_t>(n) + 1, 0);
  for (const int64_t e : grouped_event_) ++first[e + 1];
  for (int64_t i = 0; i < n; ++i) first[i + 1] += first[i];
  const size_t done = fire_event.size();
  fire_event.resize(done + grouped_event_.size());
  fire_trigger.resize(done + grouped_event_.size());
  for (size_t f = 0; f < grouped_event_.size(); ++f) {
    const int64_t at = first[grouped_event_[f]]++;
    fire_event[done + at] = grouped_event_[f];
    fire_trigger[done + at] = grouped_trigger_[f];
  }
  // a huge batch should not pin its scratch copies for the matcher's lifetime
  if (n > kKeptScratch) {
    for (auto* v : {&order_, &g_ts_, &grouped_event_}) std::vector<int64_t>().swap(*v);
    for (auto* v : {&g_ids_, &grouped_trigger_}) std::vector<int32_t>().swap(*v);
  }
}

// order_ = 0..n-1 stably grouped by key: a counting sort when the key table is small next to
// the batch, else a sort of (key, index) pairs.
void Matcher::group_by_key(int64_t n, const int32_t* keys) {
  order_.resize(static_cast<size_t>(n));
  if (static_cast<int64_t>(keys_.size()) <= 4 * n) {
    std::vector<int64_t> first(keys_.size() + 1, 0);
    for (int64_t i = 0; i < n; ++i) ++first[keys[i] + 1];
    for (size_t k = 0; k < keys_.size(); ++k) first[k + 1] += first[k];
    for (int64_t i = 0; i < n; ++i) order_[first[keys[i]]++] = i;
    return;
  }
  std::vector<std::pair<int32_t, int64_t>> pairs(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) pairs[i] = {keys[i], i};
  std::sort(pairs.begin(), pairs.end());
  for (int64_t i = 0; i < n; ++i) order_[i] = pairs[i].second;
}

void Matcher::match_preds(const EventIds& e) {
  matched_.clear();
  if (e.type < 0) return;
  const TypeIndex& index = types_[e.type];
  if (index.plain >= 0) matched_.push_back(index.plain);
  for (const Shape& shape : index.shapes) {
    scratch_vals_.clear();
    if (shape.page) {
      if (e.page < 0) continue;
      scratch_vals_.push_back(e.page);
    }
    bool known = true;
    for (int32_t c : shape.cols) {
      if (e.vals[c] < 0) {
        known = false;
        break;
      }
      scratch_vals_.push_back(e.vals[c]);
    }
    if (!known) continue;
    const int32_t* head = shape.table.find(hash_ids(scratch_vals_.data(), scratch_vals_.size()));
    for (int32_t i = head != nullptr ? *head : -1; i >= 0; i = shape.entries[i].next)
      if (shape.entries[i].key == scratch_vals_) {
        matched_.push_back(shape.entries[i].pred);
        break;
      }
  }
}

KeyState& Matcher::touch(int32_t key) {
  KeyState& ks = keys_[key];
  if (!ks.used) {
    ks = KeyState();
    ks.used = true;
    ks.version = version_;
    ++n_keys_;
  } else if (ks.version != version_) {
    reindex(ks);
  }
  return ks;
}

void Matcher::offer(int32_t child, Start start) {
  ++counters_.advances;
  NodeHot& c = hot_[child];
  if (c.epoch != epoch_) {
    c.epoch = epoch_;
    c.start = start;
    cands_.push_back(child);
  } else if (start.seq > c.start.seq) {
    c.start = start;
  }
}

void Matcher::step(const EventIds& e, int64_t index, int64_t seq, std::vector<int64_t>& fire_event,
                   std::vector<int32_t>& fire_trigger) {
  KeyState& ks = touch(e.key);
  ++counters_.events;
  const int64_t clock = e.ts > ks.clock ? e.ts : ks.clock;
  ks.clock = clock;
  match_preds(e);
  cands_.clear();
  ++epoch_;
  const Node& root = nodes_[0];
  expired_.clear();
  if (!matched_.empty()) {
    for (int32_t pred : matched_) {
      if (const int32_t* starter = root.relaxed_index.find(pred)) offer(*starter, Start{seq, clock});
      if (std::vector<WaitEntry>* waiting = ks.waiting.find(pred)) scan(ks, *waiting, clock, false);
    }
    if (std::vector<WaitEntry>* waiting = ks.waiting_broad.find(e.type)) scan(ks, *waiting, clock, true);
  }
  for (int32_t node : expired_) drop(ks, node);
  if (!ks.fresh.empty()) {
    for (const auto& [node, start] : ks.fresh) {
      if (clock - start.clock > hot_[node].max_within) continue;
      const Node& n = nodes_[node];
      for (int32_t pred : matched_)
        if (const int32_t* child = n.strict_index.find(pred)) offer(*child, start);
    }
    ks.fresh.clear();
  }
  counters_.entered += static_cast<int64_t>(cands_.size());
  for (int32_t child : cands_) {
    const NodeHot& h = hot_[child];
    const Start start = h.start;
    counters_.checks += h.n_triggers;
    const TriggerRef* refs = hot_triggers_.data() + h.first_trigger;
    for (int32_t r = 0; r < h.n_triggers; ++r) {
      const TriggerRef& t = refs[r];
      if (clock - start.clock > t.within || start.seq <= t.added_at) continue;
      // no entry yet: the trigger never fired for this key, so it fires now
      bool first = false;
      int64_t& last = ks.last_fire.get(t.id, &first);
      if (!first && start.seq <= last) continue;
      last = seq;
      ++counters_.fires;
      fire_event.push_back(index);
      fire_trigger.push_back(t.id);
    }
    if (h.relaxed) activate(ks, child, start);
    if (h.strict) ks.fresh.emplace_back(child, start);
  }
}

// Offers the continuations of the partial matches in one waiting list; removes stale entries
// and collects expired nodes on the way.
void Matcher::scan(KeyState& ks, std::vector<WaitEntry>& list, int64_t clock, bool broad) {
  counters_.scanned += static_cast<int64_t>(list.size());
  for (size_t i = 0; i < list.size();) {
    const WaitEntry w = list[i];
    const Slot& slot = ks.slots[w.slot];
    if (slot.gen != w.gen) {  // left by a dropped node: remove it now
      list[i] = list.back();
      list.pop_back();
      --ks.stale_entries;
      continue;
    }
    ++i;
    if (clock - slot.start.clock > slot.max_within) {
      expired_.push_back(slot.node);
      continue;
    }
    if (!broad) {
      offer(w.child, slot.start);
      continue;
    }
    const Node& n = nodes_[slot.node];
    for (int32_t pred : matched_)
      if (const int32_t* child = n.relaxed_index.find(pred)) offer(*child, slot.start);
  }
}

void Matcher::register_slot(KeyState& ks, int32_t slot) {
  Slot& s = ks.slots[slot];
  const Node& n = nodes_[s.node];
  if (n.relaxed.size() > kBroadFanout) {
    for (int32_t type : n.relaxed_types) ks.waiting_broad.get(type).push_back(WaitEntry{slot, s.gen, -1});
    s.entries = static_cast<int32_t>(n.relaxed_types.size());
  } else {
    for (const auto& [pred, child] : n.relaxed) ks.waiting.get(pred).push_back(WaitEntry{slot, s.gen, child});
    s.entries = static_cast<int32_t>(n.relaxed.size());
  }
  ks.live_entries += s.entries;
}

void Matcher::activate(KeyState& ks, int32_t node, Start start) {
  bool added = false;
  int32_t& known = ks.slot_of.get(node, &added);
  if (!added) {
    Slot& slot = ks.slots[known];
    if (start.seq > slot.start.seq) slot.start = start;
    return;
  }
  int32_t slot;
  if (!ks.free_slots.empty()) {
    slot = ks.free_slots.back();
    ks.free_slots.pop_back();
  } else {
    slot = static_cast<int32_t>(ks.slots.size());
    ks.slots.emplace_back();
  }
  Slot& s = ks.slots[slot];
  s.node = node;
  s.max_within = nodes_[node].max_within;
  s.start = start;
  known = slot;
  register_slot(ks, slot);
}

void Matcher::drop(KeyState& ks, int32_t node) {
  const int32_t* known = ks.slot_of.find(node);
  if (known == nullptr) return;
  const int32_t slot = *known;
  ks.live_entries -= ks.slots[slot].entries;
  ks.stale_entries += ks.slots[slot].entries;
  ks.slots[slot].node = -1;
  ++ks.slots[slot].gen;
  ks.free_slots.push_back(slot);
  ks.slot_of.erase(node);
  // stale entries of predicates that no event meets would pile up: rebuild when they are the
  // majority (amortised O(1) per drop)
  if (ks.stale_entries > ks.live_entries + 64) rebuild_waiting(ks);
}

// Brings a key in line with the current trie: forgets removed nodes and triggers, drops nodes
// that no longer have relaxed children and rebuilds the waiting index (a node may have gained
// children).
void Matcher::reindex(KeyState& ks) {
  std::vector<Slot> old;
  old.swap(ks.slots);
  ks.free_slots.clear();
  ks.slot_of = IntMap<int32_t>();
  ks.waiting = IntMap<std::vector<WaitEntry>>();
  ks.waiting_broad = IntMap<std::vector<WaitEntry>>();
  ks.live_entries = ks.stale_entries = 0;
  for (const Slot& s : old)
    if (s.node >= 0 && nodes_[s.node].alive && !nodes_[s.node].relaxed.empty()) activate(ks, s.node, s.start);
  ks.fresh.erase(std::remove_if(ks.fresh.begin(), ks.fresh.end(),
                                [&](const auto& f) { return !nodes_[f.first].alive || nodes_[f.first].strict.empty(); }),
                 ks.fresh.end());
  ks.last_fire.erase_if([&](int32_t t, int64_t) { return !triggers_[t].alive; });
  ks.version = version_;
}

void Matcher::rebuild_waiting(KeyState& ks) {
  ks.waiting.for_each([](int32_t, std::vector<WaitEntry>& list) { list.clear(); });
  ks.waiting_broad.for_each([](int32_t, std::vector<WaitEntry>& list) { list.clear(); });
  ks.live_entries = ks.stale_entries = 0;
  for (size_t i = 0; i < ks.slots.size(); ++i)
    if (ks.slots[i].node >= 0) register_slot(ks, static_cast<int32_t>(i));
}

// -- bounded and durable state ---------------------------------------------------------------

std::vector<std::pair<int32_t, bool>> Matcher::evict(int64_t horizon, const std::vector<int32_t>* only) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<int32_t, bool>> changed;
  if (only != nullptr)
    for (int32_t key : *only) check_key(key);
  const auto n = static_cast<int64_t>(only != nullptr ? only->size() : keys_.size());
  for (int64_t i = 0; i < n; ++i) {
    const int32_t key = only != nullptr ? (*only)[i] : static_cast<int32_t>(i);
    KeyState& ks = keys_[key];
    if (!ks.used) continue;
    if (ks.version != version_) reindex(ks);
    const size_t before = ks.active() + ks.fresh.size();
    expired_.clear();
    for (const Slot& s : ks.slots)
      if (s.node >= 0 && horizon - s.start.clock > s.max_within) expired_.push_back(s.node);
    for (int32_t node : expired_) drop(ks, node);
    // the key's next event has a clock of at least `horizon`
    ks.fresh.erase(std::remove_if(ks.fresh.begin(), ks.fresh.end(),
                                  [&](const auto& f) { return horizon - f.second.clock > nodes_[f.first].max_within; }),
                   ks.fresh.end());
    // last firings older than every partial match no longer block anything: every start that
    // can complete a trigger is later (see TriggerAutomaton._prune_last_fire)
    int64_t oldest = INT64_MAX;
    for (const Slot& s : ks.slots)
      if (s.node >= 0) oldest = std::min(oldest, s.start.seq);
    for (const auto& f : ks.fresh) oldest = std::min(oldest, f.second.seq);
    const size_t fired_before = ks.last_fire.size();
    ks.last_fire.erase_if([&](int32_t, int64_t seq) { return seq < oldest; });
    const bool pruned = ks.last_fire.size() != fired_before;
    if (ks.active() == 0 && ks.fresh.empty() && ks.clock < horizon) {
      // nothing in flight and every future event is newer than the key's clock: a new state
      // behaves identically (any future start is after any past firing anyway)
      ks = KeyState();
      --n_keys_;
      changed.emplace_back(key, true);
    } else if (pruned || ks.active() + ks.fresh.size() != before) {
      changed.emplace_back(key, false);
    }
  }
  return changed;
}

bool Matcher::has_key(int32_t key) {
  std::lock_guard<std::mutex> lock(mu_);
  check_key(key);
  return keys_[key].used;
}

KeyDump Matcher::dump_key(int32_t key) {
  std::lock_guard<std::mutex> lock(mu_);
  check_key(key);
  KeyState& ks = keys_[key];
  KeyDump out;
  if (!ks.used) return out;
  if (ks.version != version_) reindex(ks);
  out.clock = ks.clock;
  for (const Slot& s : ks.slots)
    if (s.node >= 0) out.active.emplace_back(s.node, s.start.seq, s.start.clock);
  for (const auto& [node, start] : ks.fresh) out.fresh.emplace_back(node, start.seq, start.clock);
  ks.last_fire.for_each([&](int32_t t, int64_t seq) { out.last_fire.emplace_back(t, seq); });
  return out;
}

void Matcher::set_node_label(int32_t node, std::string sort, std::string json) {
  std::lock_guard<std::mutex> lock(mu_);
  check_node(node, "set_node_label");
  require(!json.empty(), "set_node_label: empty JSON label");
  if (node_labels_.size() < nodes_.size()) node_labels_.resize(nodes_.size());
  node_labels_[node] = Label{std::move(sort), std::move(json), true};
}

void Matcher::set_trigger_label(int32_t trigger, std::string sort, std::string json) {
  std::lock_guard<std::mutex> lock(mu_);
  require(trigger >= 0 && trigger < static_cast<int64_t>(triggers_.size()) && triggers_[trigger].alive,
          "set_trigger_label: no live trigger " + std::to_string(trigger));
  require(!json.empty(), "set_trigger_label: empty JSON label");
  if (trigger_labels_.size() < triggers_.size()) trigger_labels_.resize(triggers_.size());
  trigger_labels_[trigger] = Label{std::move(sort), std::move(json), true};
}

bool Matcher::dump_key_json(int32_t key, std::string& out) {
  std::lock_guard<std::mutex> lock(mu_);
  check_key(key);
  KeyState& ks = keys_[key];
  out.clear();
  if (!ks.used) return false;
  if (ks.version != version_) reindex(ks);
  auto node_label = [&](int32_t node) -> const Label& {
    require(node >= 0 && node < static_cast<int64_t>(node_labels_.size()) && node_labels_[node].set,
            "dump_key_json: node " + std::to_string(node) + " has no label");
    return node_labels_[node];
  };
  // entries sorted by label (labels are unique among a key's active or fresh nodes and
  // among triggers), as NativeAutomaton.dump_key sorts them
  std::vector<std::pair<const Label*, Start>> entries;
  auto write_entries = [&]() {
    std::sort(entries.begin(), entries.end(),
              [](const auto& a, const auto& b) { return a.first->sort < b.first->sort; });
    out += '[';
    for (size_t i = 0; i < entries.size(); ++i) {
      if (i) out += ',';
      out += '[';
      out += entries[i].first->json;
      out += ',';
      out += std::to_string(entries[i].second.seq);
      out += ',';
      out += std::to_string(entries[i].second.clock);
      out += ']';
    }
    out += ']';
  };
  out += "{\"clock\":";
  out += std::to_string(ks.clock);
  out += ",\"active\":";
  for (const Slot& s : ks.slots)
    if (s.node >= 0) entries.emplace_back(&node_label(s.node), s.start);
  write_entries();
  out += ",\"fresh\":";
  entries.clear();
  for (const auto& [node, start] : ks.fresh) entries.emplace_back(&node_label(node), start);
  write_entries();
  out += ",\"last_fire\":{";
  std::vector<std::pair<const Label*, int64_t>> fires;
  ks.last_fire.for_each([&](int32_t t, int64_t seq) {
    require(t < static_cast<int64_t>(trigger_labels_.size()) && trigger_labels_[t].set,
            "dump_key_json: trigger " + std::to_string(t) + " has no label");
    fires.emplace_back(&trigger_labels_[t], seq);
  });
  std::sort(fires.begin(), fires.end(), [](const auto& a, const auto& b) { return a.first->sort < b.first->sort; });
  for (size_t i = 0; i < fires.size(); ++i) {
    if (i) out += ',';
    out += fires[i].first->json;
    out += ':';
    out += std::to_string(fires[i].second);
  }
  out += "}}";
  return true;
}

void Matcher::load_key(int32_t key, const KeyDump& dump) {
  std::lock_guard<std::mutex> lock(mu_);
  check_key(key);
  const auto n_nodes = static_cast<int64_t>(nodes_.size());
  for (const auto* list : {&dump.active, &dump.fresh})
    for (const auto& [node, seq, clock] : *list)
      require(node > 0 && node < n_nodes, "load_key: node id " + std::to_string(node) + " out of range");
  for (const auto& [t, seq] : dump.last_fire)
    require(t >= 0 && t < static_cast<int64_t>(triggers_.size()),
            "load_key: trigger id " + std::to_string(t) + " out of range");
  KeyState& ks = keys_[key];
  if (!ks.used) ++n_keys_;
  ks = KeyState();
  ks.used = true;
  ks.version = version_;
  ks.clock = dump.clock;
  // nodes of triggers no longer registered are skipped, as in the Python automaton
  for (const auto& [node, seq, clock] : dump.active)
    if (nodes_[node].alive && !nodes_[node].relaxed.empty()) activate(ks, node, Start{seq, clock});
  for (const auto& [node, seq, clock] : dump.fresh)
    if (nodes_[node].alive && !nodes_[node].strict.empty()) ks.fresh.emplace_back(node, Start{seq, clock});
  for (const auto& [t, seq] : dump.last_fire)
    if (triggers_[t].alive) ks.last_fire.get(t) = seq;
}

void Matcher::forget_key(int32_t key) {
  std::lock_guard<std::mutex> lock(mu_);
  check_key(key);
  if (keys_[key].used) --n_keys_;
  keys_[key] = KeyState();
}

int64_t Matcher::ordinal() {
  std::lock_guard<std::mutex> lock(mu_);
  return ordinal_;
}

void Matcher::set_ordinal(int64_t ordinal) {
  std::lock_guard<std::mutex> lock(mu_);
  require(ordinal >= 0, "set_ordinal: negative ordinal");
  ordinal_ = ordinal;
}

int64_t Matcher::added_at(int32_t trigger) {
  std::lock_guard<std::mutex> lock(mu_);
  require(trigger >= 0 && trigger < static_cast<int64_t>(triggers_.size()) && triggers_[trigger].alive,
          "added_at: no live trigger " + std::to_string(trigger));
  return triggers_[trigger].added_at;
}

void Matcher::set_added_at(int32_t trigger, int64_t ordinal) {
  std::lock_guard<std::mutex> lock(mu_);
  require(trigger >= 0 && trigger < static_cast<int64_t>(triggers_.size()) && triggers_[trigger].alive,
          "set_added_at: no live trigger " + std::to_string(trigger));
  require(ordinal >= 0, "set_added_at: negative ordinal");
  triggers_[trigger].added_at = ordinal;
  for (TriggerRef& ref : nodes_[triggers_[trigger].node].triggers)
    if (ref.id == trigger) ref.added_at = ordinal;
  hot_stale_ = true;
}

int64_t Matcher::state_size() {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t total = 0;
  for (const KeyState& ks : keys_)
    if (ks.used) total += static_cast<int64_t>(ks.active() + ks.fresh.size());
  return total;
}

MatchCounters Matcher::counters() {
  std::lock_guard<std::mutex> lock(mu_);
  return counters_;
}

void Matcher::reset_counters() {
  std::lock_guard<std::mutex> lock(mu_);
  counters_ = MatchCounters();
}

int64_t Matcher::key_count() {
  std::lock_guard<std::mutex> lock(mu_);
  return n_keys_;
}

int64_t Matcher::node_count() {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t alive = 0;
  for (const Node& n : nodes_) alive += n.alive ? 1 : 0;
  return alive - 1;  // without the root
}

}  // namespace walle_stream
