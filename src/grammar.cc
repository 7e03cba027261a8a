#include "grammar.h"

#include <pthread.h>

#include <cstring>
#include <exception>
#include <map>
#include <stdexcept>
#include <vector>

#include "errors.h"
#include "json-schema-to-grammar.h"
#include "llama-grammar.h"
#include "log.h"

namespace huozi {

namespace {

// Every parse, check and conversion runs on a thread with this stack. lib/grammar.ts keeps the nesting depth
// under 256 levels (a few hundred bytes of stack each); the left-recursion check recurses once per rule along a
// chain of leftmost references, bounded by kMaxRules (about 100 bytes each). 64 MiB covers both many times;
// the memory is only reserved, pages are committed as the stack grows.
constexpr size_t kParseStack = 64u << 20;
// Rules after repetitions are expanded (`x{0,5}` adds 5): the same bound as lib/grammar.ts's estimate.
constexpr size_t kMaxRules = 100000;
// Most parse stacks a grammar may hold while it generates (llama_grammar::max_stacks, our patch 0004): each is
// walked against the vocabulary for every token. JSON-schema grammars hold a few dozen; an ambiguous grammar
// such as (a | b)+ with overlapping a and b holds thousands after a few words, at seconds per token.
constexpr size_t kMaxStacks = 1024;

// Runs `fn` on a new thread with a `bytes` stack and waits for it; what it throws is rethrown here.
template <typename F>
void RunWithStack(size_t bytes, F &&fn) {
  struct Job {
    F *fn;
    std::exception_ptr error;
  } job{&fn, nullptr};
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, bytes);
  pthread_t thread;
  const int rc = pthread_create(
      &thread, &attr,
      [](void *p) -> void * {
        Job *j = static_cast<Job *>(p);
        try {
          (*j->fn)();
        } catch (...) {
          j->error = std::current_exception();
        }
        return nullptr;
      },
      &job);
  pthread_attr_destroy(&attr);
  if (rc != 0) throw CodedError(code::kGrammar, "cannot start a thread to parse the grammar: " + std::string(strerror(rc)));
  pthread_join(thread, nullptr);
  if (job.error) std::rethrow_exception(job.error);
}

// What parsing found wrong: a message, the byte offset it is about (-1: the grammar as a whole) and the rule it
// names, if any.
struct GrammarFault {
  std::string message;
  int64_t position = -1;
  std::string rule;
  std::string limit;
};

// llama.cpp's parse_space (static there): blanks, comments, and newlines when `newline_ok`.
const char *SkipSpace(const char *pos) {
  while (*pos == ' ' || *pos == '\t' || *pos == '#' || *pos == '\r' || *pos == '\n') {
    if (*pos == '#') {
      while (*pos && *pos != '\r' && *pos != '\n') pos++;
    } else {
      pos++;
    }
  }
  return pos;
}

// llama.cpp's messages end "... at <the rest of the text>": that rest gives the position, and is cut off.
GrammarFault FaultFromMessage(const std::string &what, const std::string &text, int64_t fallback) {
  GrammarFault f;
  f.message = what;
  f.position = fallback;
  for (size_t at = what.find(" at "); at != std::string::npos; at = what.find(" at ", at + 1)) {
    const size_t rest = what.size() - (at + 4);
    if (rest <= text.size() && text.compare(text.size() - rest, rest, what, at + 4, rest) == 0) {
      f.message = what.substr(0, at);
      f.position = static_cast<int64_t>(text.size() - rest);
      break;
    }
  }
  if (what == "unexpected end of input") f.position = static_cast<int64_t>(text.size());
  return f;
}

// A rule that can begin with itself, directly or through rules that may match nothing: its id, or -1.
// llama.cpp's own check (llama_grammar_detect_left_recursion) misses recursion through a rule that is empty only
// by way of another rule (`e ::= opt e "x"`, `opt ::= "a"?`), and building the initial stacks of such a grammar
// then grows them without end (memory exhausted). Here nullability is computed transitively, with a worklist,
// and the cycle found by an iterative depth-first search: linear, and no recursion.
int64_t FindLeftRecursion(const llama_grammar_rules &rules) {
  const size_t n = rules.size();
  auto terminal = [](const llama_grammar_element &e) {
    return e.type == LLAMA_GRETYPE_CHAR || e.type == LLAMA_GRETYPE_CHAR_NOT || e.type == LLAMA_GRETYPE_CHAR_ANY ||
           e.type == LLAMA_GRETYPE_TOKEN || e.type == LLAMA_GRETYPE_TOKEN_NOT;
  };
  auto end_of_alt = [](const llama_grammar_element &e) { return e.type == LLAMA_GRETYPE_END || e.type == LLAMA_GRETYPE_ALT; };
  // 1. Which rules may match the empty string.
  struct Alt {
    uint32_t rule;
    size_t pending;  // rule references in it not yet known to be nullable
  };
  std::vector<Alt> alts;
  std::vector<std::vector<size_t>> waiting(n);  // rule -> alternatives that refer to it
  std::vector<char> nullable(n, 0);
  std::vector<uint32_t> work;
  for (uint32_t r = 0; r < n; ++r) {
    const auto &rule = rules[r];
    size_t i = 0;
    while (i < rule.size()) {
      bool has_terminal = false;
      std::vector<uint32_t> refs;
      for (; i < rule.size() && !end_of_alt(rule[i]); ++i) {
        if (terminal(rule[i])) has_terminal = true;
        if (rule[i].type == LLAMA_GRETYPE_RULE_REF) refs.push_back(rule[i].value);
      }
      if (!has_terminal) {
        alts.push_back({r, refs.size()});
        for (uint32_t ref : refs) waiting[ref].push_back(alts.size() - 1);
        if (refs.empty() && !nullable[r]) {
          nullable[r] = 1;
          work.push_back(r);
        }
      }
      if (i < rule.size() && rule[i].type == LLAMA_GRETYPE_END) break;
      ++i;
    }
  }
  while (!work.empty()) {
    const uint32_t r = work.back();
    work.pop_back();
    for (size_t a : waiting[r]) {
      if (--alts[a].pending == 0 && !nullable[alts[a].rule]) {
        nullable[alts[a].rule] = 1;
        work.push_back(alts[a].rule);
      }
    }
  }
  // 2. Edges to the rules each rule may begin with.
  std::vector<std::vector<uint32_t>> begins(n);
  for (uint32_t r = 0; r < n; ++r) {
    bool open = true;
    for (const auto &e : rules[r]) {
      if (end_of_alt(e)) {
        open = true;
      } else if (open && e.type == LLAMA_GRETYPE_RULE_REF) {
        begins[r].push_back(e.value);
        open = nullable[e.value] != 0;
      } else if (terminal(e)) {
        open = false;
      }
    }
  }
  // 3. A cycle among them.
  std::vector<char> state(n, 0);  // 0 new, 1 on the path, 2 done
  std::vector<std::pair<uint32_t, size_t>> path;
  for (uint32_t start = 0; start < n; ++start) {
    if (state[start] != 0) continue;
    path.push_back({start, 0});
    state[start] = 1;
    while (!path.empty()) {
      auto &[r, next] = path.back();
      if (next < begins[r].size()) {
        const uint32_t to = begins[r][next++];
        if (state[to] == 1) return to;
        if (state[to] == 0) {
          state[to] = 1;
          path.push_back({to, 0});
        }
      } else {
        state[r] = 2;
        path.pop_back();
      }
    }
  }
  return -1;
}

std::string NameOf(const llama_grammar_parser &parser, uint32_t id) {
  for (const auto &kv : parser.symbol_ids) {
    if (kv.second == id) return kv.first;
  }
  return "#" + std::to_string(id);
}

// Parses `text` rule by rule (llama_grammar_parser::parse would print the whole text to stderr on an error),
// checks every referenced rule is defined and `root` exists, and builds the grammar (left recursion is refused
// there). Call on a RunWithStack thread. Returns null and fills `fault` when the text is not a usable grammar.
llama_grammar *Build(const std::string &text, const std::string &root, const llama_vocab *vocab, GrammarFault &fault) {
  llama_grammar_parser parser(vocab);
  const char *src = text.c_str();
  const char *pos = SkipSpace(src);
  const char *rule_start = pos;
  try {
    while (*pos) {
      rule_start = pos;
      pos = SkipSpace(parser.parse_rule(pos));
      if (parser.rules.size() > kMaxRules) {
        fault.message = "the grammar expands to more than " + std::to_string(kMaxRules) + " rules";
        fault.position = rule_start - src;
        fault.limit = "rules";
        return nullptr;
      }
    }
  } catch (const std::exception &e) {
    fault = FaultFromMessage(e.what(), text, rule_start - src);
    return nullptr;
  }
  if (parser.rules.empty()) {
    fault.message = "the grammar has no rules";
    return nullptr;
  }
  for (uint32_t id = 0; id < parser.symbol_ids.size(); ++id) {
    if (id >= parser.rules.size() || parser.rules[id].empty()) {
      fault.rule = NameOf(parser, id);
      fault.message = "undefined rule '" + fault.rule + "'";
      return nullptr;
    }
  }
  auto start = parser.symbol_ids.find(root);
  if (start == parser.symbol_ids.end()) {
    fault.rule = root;
    fault.message = "the grammar has no rule named '" + root + "' (its root)";
    return nullptr;
  }
  const int64_t recursive = FindLeftRecursion(parser.rules);
  if (recursive >= 0) {
    fault.rule = NameOf(parser, static_cast<uint32_t>(recursive));
    fault.message = "left recursion in rule '" + fault.rule + "' (llama.cpp's grammars cannot refer to a rule at its own start)";
    return nullptr;
  }
  llama_grammar_stack rules = parser.c_rules();
  TakeThreadErrors();
  llama_grammar *grammar = llama_grammar_init_impl(vocab, rules.data(), rules.size(), start->second);
  if (grammar != nullptr && grammar->stacks.size() > kMaxStacks) {
    fault.message = "the grammar is too ambiguous: it can start in " + std::to_string(grammar->stacks.size()) +
                    " ways, more than the limit of " + std::to_string(kMaxStacks);
    fault.limit = "stacks";
    llama_grammar_free_impl(grammar);
    return nullptr;
  }
  if (grammar != nullptr) grammar->max_stacks = kMaxStacks;
  if (grammar == nullptr) {
    const std::string why = TakeThreadErrors();
    const size_t at = why.find("at index ");
    if (why.find("left recursion") != std::string::npos && at != std::string::npos) {
      const uint32_t id = static_cast<uint32_t>(std::strtoul(why.c_str() + at + 9, nullptr, 10));
      fault.rule = NameOf(parser, id);
      fault.message = "left recursion in rule '" + fault.rule + "' (llama.cpp's grammars cannot refer to a rule at its own start)";
    } else {
      fault.message = "llama.cpp refused the grammar" + (why.empty() ? std::string() : ": " + why);
    }
  }
  return grammar;
}

Napi::Value Fail(Napi::Env env, const GrammarFault &f) {
  Napi::Error error = MakeError(env, code::kGrammar, f.message);
  error.Set("position", Napi::Number::New(env, static_cast<double>(f.position)));
  if (!f.rule.empty()) error.Set("rule", Napi::String::New(env, f.rule));
  if (!f.limit.empty()) error.Set("limit", Napi::String::New(env, f.limit));
  throw error;
}

void FreeCompiled(Napi::Env, GrammarRef *ref) { delete ref; }

// grammarCompile(gbnf, root, validationText?) -> External. `validationText` is the text with each token named
// by its text replaced by `.` (lib/grammar.ts, same length): it is validated without a vocabulary, and the real
// text is parsed again against each generation's vocabulary.
Napi::Value GrammarCompile(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) {
    Throw(env, code::kInvalidArgument, "grammarCompile(gbnf, root, validationText?)");
  }
  auto compiled = std::make_shared<CompiledGrammar>();
  compiled->gbnf = info[0].As<Napi::String>().Utf8Value();
  compiled->root = info[1].As<Napi::String>().Utf8Value();
  compiled->needs_vocab = info.Length() > 2 && info[2].IsString();
  const std::string validation = compiled->needs_vocab ? info[2].As<Napi::String>().Utf8Value() : compiled->gbnf;
  if (validation.size() != compiled->gbnf.size() || validation.find('\0') != std::string::npos) {
    Throw(env, code::kInvalidArgument, "the grammar text must not contain NUL bytes");
  }
  GrammarFault fault;
  llama_grammar *grammar = nullptr;
  try {
    RunWithStack(kParseStack, [&] { grammar = Build(validation, compiled->root, nullptr, fault); });
  } catch (const CodedError &e) {
    Throw(env, e.code(), e.what());
  } catch (const std::exception &e) {
    fault.message = std::string("llama.cpp: ") + e.what();
  }
  if (grammar == nullptr) return Fail(env, fault);
  if (compiled->needs_vocab) {
    llama_grammar_free_impl(grammar);
  } else {
    compiled->grammar = grammar;
  }
  return Napi::External<GrammarRef>::New(env, new GrammarRef(std::move(compiled)), FreeCompiled);
}

// jsonSchemaToGrammar(json) -> GBNF, through llama.cpp's common/json-schema-to-grammar.cpp (lib/json-schema.ts has
// already refused what it would ignore).
Napi::Value JsonSchemaToGrammar(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) Throw(env, code::kInvalidArgument, "jsonSchemaToGrammar(json)");
  const std::string json = info[0].As<Napi::String>().Utf8Value();
  std::string gbnf;
  std::string error;
  try {
    RunWithStack(kParseStack, [&] {
      try {
        gbnf = json_schema_to_grammar(common_json::parse(json), /* force_gbnf */ true);
      } catch (const std::exception &e) {
        error = e.what();
      }
    });
  } catch (const std::exception &e) {
    error = e.what();
  }
  if (!error.empty()) {
    GrammarFault f;
    f.message = error;
    return Fail(env, f);
  }
  return Napi::String::New(env, gbnf);
}

}  // namespace

CompiledGrammar::~CompiledGrammar() {
  if (grammar != nullptr) llama_grammar_free_impl(grammar);
}

void GrammarDeleter::operator()(llama_grammar *g) const { llama_grammar_free_impl(g); }

GrammarRef GrammarFromJs(Napi::Env env, Napi::Value value) {
  if (value.IsUndefined() || value.IsNull()) return nullptr;
  if (!value.IsExternal()) Throw(env, code::kInvalidArgument, "grammar must be a compiled Grammar");
  GrammarRef *ref = value.As<Napi::External<GrammarRef>>().Data();
  if (ref == nullptr || !*ref || (*ref)->magic != CompiledGrammar::kMagic) {
    Throw(env, code::kInvalidArgument, "grammar must be a compiled Grammar");
  }
  return *ref;
}

GrammarInstance InstantiateGrammar(const CompiledGrammar &compiled, const llama_vocab *vocab) {
  if (!compiled.needs_vocab) {
    // Copying the parsed rules and the initial stacks: no parsing, no recursion.
    GrammarInstance copy(llama_grammar_clone_impl(*compiled.grammar));
    copy->vocab = vocab;
    return copy;
  }
  GrammarFault fault;
  llama_grammar *grammar = nullptr;
  RunWithStack(kParseStack, [&] { grammar = Build(compiled.gbnf, compiled.root, vocab, fault); });
  if (grammar == nullptr) {
    throw CodedError(code::kGrammar, fault.message + (fault.position >= 0 ? " at byte " + std::to_string(fault.position) : ""));
  }
  return GrammarInstance(grammar);
}

bool GrammarComplete(const llama_grammar &grammar) {
  for (const auto &stack : grammar.stacks) {
    if (stack.empty()) return true;
  }
  return false;
}

void RegisterGrammar(Napi::Env env, Napi::Object exports) {
  exports.Set("grammarCompile", Napi::Function::New(env, GrammarCompile));
  exports.Set("jsonSchemaToGrammar", Napi::Function::New(env, JsonSchemaToGrammar));
}

}  // namespace huozi
