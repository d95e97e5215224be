// A small open-addressing hash map from non-negative int32 ids to values: linear probing in a
// power-of-two table at most half full, deletion by backward shift (no tombstones). The
// matcher's per-key maps (node -> slot, predicate -> waiting list, trigger -> last firing) are
// touched several times per event; std::unordered_map allocates a node per insert and divides
// by a prime per lookup, which dominated the matcher's profile.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace walle_stream {

template <class V>
class IntMap {
 public:
  size_t size() const { return size_; }

  V* find(int32_t key) {
    if (size_ == 0) return nullptr;
    for (size_t i = home(key);; i = (i + 1) & mask_) {
      if (keys_[i] == key) return &vals_[i];
      if (keys_[i] == kEmpty) return nullptr;
    }
  }
  const V* find(int32_t key) const { return const_cast<IntMap*>(this)->find(key); }

  // The value of `key`, inserted as V() first when missing (`added` says which).
  V& get(int32_t key, bool* added = nullptr) {
    if (2 * (size_ + 1) > keys_.size()) grow();
    size_t i = home(key);
    for (; keys_[i] != kEmpty; i = (i + 1) & mask_)
      if (keys_[i] == key) {
        if (added) *added = false;
        return vals_[i];
      }
    keys_[i] = key;
    vals_[i] = V();
    ++size_;
    if (added) *added = true;
    return vals_[i];
  }

  bool erase(int32_t key) {
    if (size_ == 0) return false;
    size_t i = home(key);
    for (; keys_[i] != key; i = (i + 1) & mask_)
      if (keys_[i] == kEmpty) return false;
    // shift later members of the probe run back so lookups never stop early at the hole
    for (size_t j = i;;) {
      j = (j + 1) & mask_;
      if (keys_[j] == kEmpty) break;
      const size_t k = home(keys_[j]);
      const bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
      if (stays) continue;
      keys_[i] = keys_[j];
      vals_[i] = std::move(vals_[j]);
      i = j;
    }
    keys_[i] = kEmpty;
    vals_[i] = V();
    --size_;
    return true;
  }

  template <class F>
  void for_each(F&& f) const {
    for (size_t i = 0; i < keys_.size(); ++i)
      if (keys_[i] != kEmpty) f(keys_[i], vals_[i]);
  }
  template <class F>
  void for_each(F&& f) {
    for (size_t i = 0; i < keys_.size(); ++i)
      if (keys_[i] != kEmpty) f(keys_[i], vals_[i]);
  }

  // Removes the members for which `drop(key, value)` is true.
  template <class F>
  void erase_if(F&& drop) {
    std::vector<int32_t> doomed;
    for_each([&](int32_t k, const V& v) {
      if (drop(k, v)) doomed.push_back(k);
    });
    for (int32_t k : doomed) erase(k);
  }

 private:
  static constexpr int32_t kEmpty = -1;

  // Fibonacci hashing: ids are small and dense, the multiply spreads them over the table.
  size_t home(int32_t key) const {
    return static_cast<size_t>((static_cast<uint64_t>(static_cast<uint32_t>(key)) * 0x9E3779B97F4A7C15ull) >> 32) &
           mask_;
  }

  void grow() {
    std::vector<int32_t> keys(keys_.empty() ? 8 : 2 * keys_.size(), kEmpty);
    std::vector<V> vals(keys.size());
    keys.swap(keys_);
    vals.swap(vals_);
    mask_ = keys_.size() - 1;
    size_ = 0;
    for (size_t i = 0; i < keys.size(); ++i)
      if (keys[i] != kEmpty) get(keys[i]) = std::move(vals[i]);
  }

  std::vector<int32_t> keys_;
  std::vector<V> vals_;
  size_t size_ = 0;
  size_t mask_ = 0;
};

}  // namespace walle_stream
