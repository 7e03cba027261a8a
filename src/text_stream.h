// Turns the bytes of generated token pieces into text that is safe to hand to JS:
//  - never splits a UTF-8 sequence (a CJK character spread over byte-fallback tokens comes out whole),
//  - holds back text that could be the start of a stop string until it is known not to be,
//  - cuts the output exactly before the first stop string.
#pragma once
#include <string>
#include <vector>

namespace huozi {

class TextStream final {
 public:
  explicit TextStream(std::vector<std::string> stop_strings) : stops_(std::move(stop_strings)) {}

  // Adds raw bytes; returns the text that became final (possibly empty).
  std::string Push(const std::string &bytes);
  // End of generation: the held-back text is final (an incomplete UTF-8 tail is dropped: it is no character).
  std::string Finish();
  bool stopped() const { return stopped_; }
  const std::string &matched_stop() const { return matched_; }

 private:
  static size_t CompleteUtf8Prefix(const std::string &s);

  std::vector<std::string> stops_;
  std::string carry_;    // bytes of an incomplete UTF-8 sequence
  std::string pending_;  // complete characters not yet released (may start a stop string)
  std::string matched_;
  bool stopped_ = false;
};

}  // namespace huozi
