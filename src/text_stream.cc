#include "text_stream.h"

#include <algorithm>

namespace huozi {

size_t TextStream::CompleteUtf8Prefix(const std::string &s) {
  // Walk back over at most 3 continuation bytes to the last lead byte and check whether its sequence is whole.
  size_t n = s.size();
  size_t i = n;
  int continuation = 0;
  while (i > 0 && continuation < 4) {
    unsigned char c = static_cast<unsigned char>(s[i - 1]);
    if ((c & 0xC0) != 0x80) break;
    --i;
    ++continuation;
  }
  if (i == 0) return continuation == 0 ? 0 : n;  // only continuation bytes: invalid, let it through
  unsigned char lead = static_cast<unsigned char>(s[i - 1]);
  size_t need = lead < 0x80 ? 1 : (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xE ? 3 : (lead >> 3) == 0x1E ? 4 : 1;
  size_t have = static_cast<size_t>(continuation) + 1;
  return have >= need ? n : i - 1;
}

std::string TextStream::Push(const std::string &bytes) {
  if (stopped_) return std::string();
  carry_ += bytes;
  size_t whole = CompleteUtf8Prefix(carry_);
  pending_.append(carry_, 0, whole);
  carry_.erase(0, whole);

  // A full stop string anywhere in pending text ends the output right before it.
  size_t cut = std::string::npos;
  for (const std::string &stop : stops_) {
    size_t at = pending_.find(stop);
    if (at != std::string::npos && (cut == std::string::npos || at < cut)) {
      cut = at;
      matched_ = stop;
    }
  }
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, cut);
    pending_.clear();
    carry_.clear();
    return out;
  }
  // Keep back the longest suffix that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string &stop : stops_) {
    size_t max = std::min(stop.size() - 1, pending_.size());
    for (size_t len = max; len > hold; --len) {
      if (pending_.compare(pending_.size() - len, len, stop, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  // Never hold back part of a character: move the boundary back to a UTF-8 lead byte.
  size_t release = pending_.size() - hold;
  while (release > 0 && release < pending_.size() && (static_cast<unsigned char>(pending_[release]) & 0xC0) == 0x80) {
    --release;
  }
  std::string out = pending_.substr(0, release);
  pending_.erase(0, release);
  return out;
}

std::string TextStream::Finish() {
  if (stopped_) return std::string();
  std::string out;
  out.swap(pending_);
  carry_.clear();
  return out;
}

}  // namespace huozi
