// GBNF grammars: compiled once (Grammar.compile / Grammar.fromJsonSchema in lib/grammar.ts) into llama.cpp's own
// parsed form, kept here, and copied into each generation that uses them, so a generation never parses again.
//
// llama.cpp's GBNF parser is recursive descent (nested parentheses recurse) and its left-recursion check recurses
// over rules: lib/grammar.ts bounds the text, the nesting depth and the elements repetitions expand to before the
// text gets here, and everything that parses or converts runs on a thread of its own with a large stack
// (RunWithStack), so that no input reaches a stack overflow (SIGSEGV) or an allocation past those bounds.
#pragma once
#include <napi.h>

#include <memory>
#include <string>

#include "llama.h"

struct llama_grammar;
struct llama_vocab;

namespace huozi {

// A grammar validated without a vocabulary: its llama_grammar (rules and initial stacks), or, when it names
// tokens by their text (`<|tool_call|>`), only its text, parsed again against each generation's vocabulary.
struct CompiledGrammar {
  static constexpr uint32_t kMagic = 0x67626e66;  // "gbnf": an External of anything else is refused
  uint32_t magic = kMagic;
  std::string gbnf;
  std::string root;
  llama_grammar *grammar = nullptr;  // null when needs_vocab
  bool needs_vocab = false;
  ~CompiledGrammar();
};
using GrammarRef = std::shared_ptr<const CompiledGrammar>;

struct GrammarDeleter {
  void operator()(llama_grammar *g) const;
};
using GrammarInstance = std::unique_ptr<llama_grammar, GrammarDeleter>;

// Main thread: the compiled grammar a params object carries (lib/ passes Grammar's native handle), or null.
GrammarRef GrammarFromJs(Napi::Env env, Napi::Value value);

// Generating thread: a fresh copy of the grammar's state for one generation, bound to `vocab`. Throws
// CodedError(kGrammar) when a token named by its text is not one token of this vocabulary.
GrammarInstance InstantiateGrammar(const CompiledGrammar &compiled, const llama_vocab *vocab);

// Whether the grammar has matched a whole sentence (an end-of-generation token is allowed).
bool GrammarComplete(const llama_grammar &grammar);

// grammarCompile(gbnf, root) -> External, jsonSchemaToGrammar(json) -> string.
void RegisterGrammar(Napi::Env env, Napi::Object exports);

}  // namespace huozi
