// A small open-addressing hash map from non-negative int32 ids (or 64-bit hashes) to values:
// linear probing in a power-of-two table at most half full, deletion by backward shift (no
// tombstones), each key next to its value so a lookup touches one cache line. The matcher's
// per-key maps (node -> slot, predicate -> waiting list, trigger -> last firing) are
// touched several times per event; std::unordered_map allocates a node per insert and divides
// by a prime per lookup, which dominated the matcher's profile.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace walle_stream {

template <class K, class V>
class FlatMap {
 public:
  size_t size() const { return size_; }

  V* find(K key) {
    if (size_ == 0) return nullptr;
    for (size_t i = home(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return &slots_[i].val;
      if (slots_[i].key == kEmpty) return nullptr;
    }
  }
  const V* find(K key) const { return const_cast<FlatMap*>(this)->find(key); }

  // The value of `key`, inserted as V() first when missing (`added` says which).
  V& get(K key, bool* added = nullptr) {
    if (2 * (size_ + 1) > slots_.size()) grow();
    size_t i = home(key);
    for (; slots_[i].key != kEmpty; i = (i + 1) & mask_)
      if (slots_[i].key == key) {
        if (added) *added = false;
        return slots_[i].val;
      }
    slots_[i].key = key;
    slots_[i].val = V();
    ++size_;
    if (added) *added = true;
    return slots_[i].val;
  }

  bool erase(K key) {
    if (size_ == 0) return false;
    size_t i = home(key);
    for (; slots_[i].key != key; i = (i + 1) & mask_)
      if (slots_[i].key == kEmpty) return false;
    // shift later members of the probe run back so lookups never stop early at the hole
    for (size_t j = i;;) {
      j = (j + 1) & mask_;
      if (slots_[j].key == kEmpty) break;
      const size_t k = home(slots_[j].key);
      const bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
      if (stays) continue;
      slots_[i].key = slots_[j].key;
      slots_[i].val = std::move(slots_[j].val);
      i = j;
    }
    slots_[i].key = kEmpty;
    slots_[i].val = V();
    --size_;
    return true;
  }

  template <class F>
  void for_each(F&& f) const {
    for (const Slot& s : slots_)
      if (s.key != kEmpty) f(s.key, s.val);
  }
  template <class F>
  void for_each(F&& f) {
    for (Slot& s : slots_)
      if (s.key != kEmpty) f(s.key, s.val);
  }

  // Removes the members for which `drop(key, value)` is true.
  template <class F>
  void erase_if(F&& drop) {
    std::vector<K> doomed;
    for_each([&](K k, const V& v) {
      if (drop(k, v)) doomed.push_back(k);
    });
    for (K k : doomed) erase(k);
  }

 private:
  // ids are never negative and hashes never all ones (see hash_ids), so this marks a free slot
  static constexpr K kEmpty = static_cast<K>(-1);

  // Fibonacci hashing: ids are small and dense, the multiply spreads them over the table.
  size_t home(K key) const {
    return static_cast<size_t>((static_cast<uint64_t>(key) * 0x9E3779B97F4A7C15ull) >> 32) & mask_;
  }

  void grow() {
    std::vector<Slot> old(slots_.empty() ? 8 : 2 * slots_.size());
    old.swap(slots_);
    mask_ = slots_.size() - 1;
    size_ = 0;
    for (Slot& s : old)
      if (s.key != kEmpty) get(s.key) = std::move(s.val);
  }

  struct Slot {
    K key = kEmpty;
    V val{};
  };
  std::vector<Slot> slots_;
  size_t size_ = 0;
  size_t mask_ = 0;
};

template <class V>
using IntMap = FlatMap<int32_t, V>;

}  // namespace walle_stream
