// Hugging Face tokenizer.json files with a byte-level BPE model (GPT-2, SmolLM, Llama 3, Qwen2
// style): the file's vocabulary, merges, added tokens, normalizer (none or NFC) and pre-tokenizer
// read into bpe.h's encoder; or a SentencePiece model converted to BPE with byte fallback (Llama
// 2, Mistral, TinyLlama), read as transformers 5 reads it. What frugal cannot reproduce exactly
// is a UserError naming the file and the field (see data.h).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <queue>

#include "data/bpe.h"

namespace frugal {

namespace {

using nlohmann::json;

// Whether transformers 5 reads a byte-fallback tokenizer as its LlamaTokenizer class (see
// load_hf_tokenizer): tokenizer_config.json's tokenizer_class, config.json's model_type.
bool llama_class(const json& config, const std::string& model_type) {
  const json cls = config.is_object() ? config.value("tokenizer_class", json()) : json();
  return (cls == "LlamaTokenizer" || cls == "LlamaTokenizerFast") && model_type != "mistral" && model_type != "mixtral";
}

class HfTokenizer final : public Tokenizer {
 public:
  // path: a tokenizer.json; or, with `converted`, the tokenizer.model it was converted from
  // (convert_sentencepiece), written out as tokenizer.json by save_files
  HfTokenizer(const std::string& path, const std::string& model_type, json converted = nullptr)
      : path_(path), model_type_(model_type) {
    const bool from_model = !converted.is_null();
    json j = std::move(converted);
    try {
      if (j.is_null()) j = json::parse(read_whole_file(path));
    } catch (const json::exception& e) {
      user_error("{}: not JSON: {}", path, e.what());
    }
    try {
      read(j);
    } catch (const json::exception& e) {
      user_error("{}: not a Hugging Face tokenizer.json: {}", path, e.what());
    }
    if (!from_model) return;
    // as transformers writes what it converted: the Metaspace it applies, its decoder's Strip
    j["pre_tokenizer"]["prepend_scheme"] = prefix_ == Prefix::never ? "never" : prefix_ == Prefix::always ? "always" : "first";
    if (strip_) j["decoder"]["decoders"].push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    converted_ = j.dump(2);
  }

  TokenizerKind kind() const override { return TokenizerKind::hf_bpe; }
  std::string model_type() const override { return fallback_ ? model_type_ : ""; }
  int vocab_size() const override { return int(bytes_.size()); }
  uint32_t eot() const override { return eot_; }
  int64_t bos() const override { return bos_; }

  // As tokenizers: the added tokens not normalized are found in the text as written, the text
  // between them normalised, the normalized added tokens found in that, and the rest split and
  // merged.
  void encode(std::string_view text, std::vector<uint32_t>& out) override {
    if (fallback_) return encode_parts(text, false, out);
    split_added(raw_, text, out, [&](std::string_view part) {
      if (nfc_) {
        normalized_.clear();
        nfc_append(part, normalized_);
        part = normalized_;
      }
      split_added(normalized_added_, part, out, [&](std::string_view rest) { bpe_->encode(rest, out); });
    });
  }

  bool has_id(int32_t id) const override { return id >= 0 && id < vocab_size() && present_[size_t(id)]; }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t id : ids) {
      if (!has_id(id))
        user_error("{}: token id {} is not in the vocabulary (ids [0, {}))", path_, id, vocab_size());
      s += bytes_[size_t(id)];
    }
    if (strip_ && !s.empty() && s[0] == ' ') s.erase(0, 1);  // the decoder's Strip of the prefix
    return s;
  }
  // a byte-fallback text cut after a '\n' merges as the whole where no token holds '\n' before
  // its last byte, and its rest is encoded with no prefix
  bool cuts_at_lines() const override { return !fallback_ || !crosses_lines_; }
  void encode_rest(std::string_view text, std::vector<uint32_t>& out) override {
    if (fallback_) return encode_parts(text, true, out);
    encode(text, out);
  }

  void save_files(const std::string& dir) const override {
    std::string jinja = (std::filesystem::path(path_).parent_path() / kChatTemplateFile).string();
    if (!converted_.empty()) write_file_atomic(dir + "/tokenizer.json", converted_.data(), converted_.size());
    for (auto [from, name] : {std::pair{path_, "tokenizer.json"}, std::pair{config_path_, "tokenizer_config.json"},
                              std::pair{jinja, kChatTemplateFile}}) {
      if (from == path_ && !converted_.empty()) continue;  // written above
      std::error_code ec;
      std::string to = dir + "/" + name;
      if (from.empty() || !std::filesystem::exists(from)) {  // not another tokenizer's, left by an earlier prepare
        std::filesystem::remove(to, ec);
        continue;
      }
      if (std::filesystem::equivalent(to, from, ec)) continue;
      std::string text = read_whole_file(from);
      write_file_atomic(to, text.data(), text.size());
    }
  }

 private:
  // Added tokens of one kind: (content, id), longest first.
  struct AddedTokens {
    std::vector<std::pair<std::string, uint32_t>> tokens;
    bool first_byte[256] = {};  // whether a token starts with the byte
  };

  // The ids of the tokens found in text (leftmost, the longest where several start), and
  // between(part) for the text between them.
  template <class F>
  static void split_added(const AddedTokens& added, std::string_view text, std::vector<uint32_t>& out, F&& between) {
    size_t seg = 0;
    for (size_t i = 0; i < text.size();) {
      size_t len = 0;
      uint32_t id = 0;
      if (added.first_byte[uint8_t(text[i])]) {
        for (auto& [content, aid] : added.tokens) {  // longest first
          if (text.compare(i, content.size(), content) == 0) { len = content.size(); id = aid; break; }
        }
      }
      if (len == 0) { i++; continue; }
      between(text.substr(seg, i - seg));
      out.push_back(id);
      i += len;
      seg = i;
    }
    between(text.substr(seg));
  }

  [[noreturn]] void bad(const std::string& field, const json& got, const std::string& expected) const {
    user_error("{}: {} is {}, expected {}", path_, field, got.dump().substr(0, 200), expected);
  }

  void read(const json& j) {
    const json& model = j.at("model");
    if (model.value("type", std::string("BPE")) != "BPE")
      bad("model.type", model["type"], "\"BPE\" (frugal reads BPE tokenizer.json files: byte-level, or with byte fallback)");
    if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() != 0)
      bad("model.dropout", model["dropout"], "null");
    for (const char* f : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (model.contains(f) && !model[f].is_null() && model[f] != "") bad(std::string("model.") + f, model[f], "null");
    fallback_ = model.value("byte_fallback", false);
    read_config();
    SplitPattern split = SplitPattern::gpt2;
    if (fallback_) {
      read_fallback_pipeline(j);
    } else {
      if (j.contains("normalizer")) read_normalizer(j["normalizer"]);
      split = read_pre_tokenizer(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json());
    }

    // the vocabulary: byte-level, each token's characters are bytes in GPT-2's byte_level_chars
    // form; with byte fallback, text with "▁" for a space, and <0xXX> for a byte
    std::array<uint32_t, 256> chars = byte_level_chars();
    std::unordered_map<uint32_t, char> byte_of;
    for (int b = 0; b < 256; b++) byte_of[chars[size_t(b)]] = char(b);
    std::unordered_map<std::string, uint32_t> id_of;  // the vocabulary as written
    std::vector<std::string> mergeable;               // id -> bytes of the byte-level tokens
    for (auto& [text, v] : model.at("vocab").items()) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > (1 << 30))
        bad("model.vocab[\"" + text + "\"]", v, "a token id");
      uint32_t id = v.get<uint32_t>();
      id_of[text] = id;
      if (id >= bytes_.size()) { bytes_.resize(id + 1); present_.resize(id + 1); mergeable.resize(id + 1); }
      present_[id] = true;
      if (fallback_) {
        bytes_[id] = fallback_text(text);
        continue;
      }
      std::string raw;
      bool byte_level = to_bytes(text, byte_of, raw);
      bytes_[id] = byte_level ? raw : text;
      if (byte_level) mergeable[id] = raw;
    }
    std::vector<std::array<uint32_t, 3>> merges;
    const json& ms = model.at("merges");
    for (size_t k = 0; k < ms.size(); k++) {
      std::string a, b;
      if (ms[k].is_string()) {
        std::string m = ms[k];
        size_t sp = m.find(' ');
        if (sp == std::string::npos) bad(fmt::format("model.merges[{}]", k), ms[k], "\"A B\" or [\"A\", \"B\"]");
        a = m.substr(0, sp), b = m.substr(sp + 1);
      } else if (ms[k].is_array() && ms[k].size() == 2 && ms[k][0].is_string() && ms[k][1].is_string()) {
        a = ms[k][0], b = ms[k][1];
      } else {
        bad(fmt::format("model.merges[{}]", k), ms[k], "\"A B\" or [\"A\", \"B\"]");
      }
      auto ia = id_of.find(a), ib = id_of.find(b), iab = id_of.find(a + b);
      if (ia == id_of.end() || ib == id_of.end() || iab == id_of.end())
        bad(fmt::format("model.merges[{}]", k), ms[k], "two tokens of model.vocab that merge into one");
      merges.push_back({ia->second, ib->second, iab->second});
    }
    if (fallback_) read_fallback_model(id_of, merges);
    else bpe_ = std::make_unique<BytePairEncoder>(mergeable, merges, split, model.value("ignore_merges", false), path_);

    // added tokens: matched in the text as they are, decoded as their content. Numbered as
    // tokenizers numbers them when it loads the file (their "id" is only checked there): a
    // token of the vocabulary keeps its id, a new one comes after the vocabulary and the added
    // tokens so far.
    if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
      const json& at = j["added_tokens"];
      const uint32_t num_vocab = uint32_t(model.at("vocab").size());
      std::unordered_map<std::string, uint32_t> added_id;
      int64_t max_added = -1;
      for (size_t k = 0; k < at.size(); k++) {
        for (const char* f : {"lstrip", "rstrip", "single_word"})
          if (at[k].value(f, false)) bad(fmt::format("added_tokens[{}].{}", k, f), true, "false");
        bool normalized = at[k].value("normalized", false);  // tokenizers requires the field
        if (fallback_ && normalized) {
          // with no normalizer (transformers' LlamaTokenizer, a Metaspace file) the text as written
          if (prefix_ == Prefix::prepend)
            bad(fmt::format("added_tokens[{}].normalized", k), true, "false (frugal finds them in the text as written)");
          normalized = false;
        }
        std::string content = at[k].at("content");
        if (content.empty()) bad(fmt::format("added_tokens[{}].content", k), content, "a non-empty string");
        uint32_t id;
        if (auto a = added_id.find(content); a != added_id.end()) id = a->second;
        else if (auto v = id_of.find(content); v != id_of.end()) id = v->second;
        else id = max_added >= int64_t(num_vocab) ? uint32_t(max_added + 1) : num_vocab;
        added_id[content] = id;
        max_added = std::max(max_added, int64_t(id));
        if (id >= bytes_.size()) { bytes_.resize(id + 1); present_.resize(id + 1); }
        bytes_[id] = content;
        present_[id] = true;
        id_of[content] = id;
        added_.emplace_back(content, id);
        AddedTokens& kind = normalized ? normalized_added_ : raw_;
        std::string match = normalized && nfc_ ? nfc(content) : content;  // as found in the normalised text
        kind.tokens.emplace_back(match, id);
        kind.first_byte[uint8_t(match[0])] = true;
      }
      for (AddedTokens* kind : {&raw_, &normalized_added_})
        std::stable_sort(kind->tokens.begin(), kind->tokens.end(),
                         [](auto& x, auto& y) { return x.first.size() > y.first.size(); });
    }
    eot_ = read_eot(id_of);
    bos_prefix_ = hf_bos_prefix(path_, &j, vocab_size(), [&](const std::string& t) {
      auto it = id_of.find(t);
      return it == id_of.end() ? int64_t(-1) : int64_t(it->second);
    });
  }

  // The normalizer: null, NFC, or a Sequence of NFC alone.
  void read_normalizer(const json& n) {
    const char* expected = "null or \"NFC\" (the only normalizer frugal applies)";
    if (n.is_null()) return;
    std::string type = n.is_object() ? n.value("type", std::string()) : std::string();
    if (type == "NFC") { nfc_ = true; return; }
    if (type != "Sequence") bad("normalizer", n.is_object() ? n.value("type", json()) : n, expected);
    const json& ns = n.at("normalizers");
    for (size_t k = 0; k < ns.size(); k++) {
      if (!ns[k].is_object() || ns[k].value("type", std::string()) != "NFC")
        bad(fmt::format("normalizer.normalizers[{}]", k), ns[k].is_object() ? ns[k].value("type", json()) : ns[k],
            "\"NFC\" (the only normalizer frugal applies)");
      nfc_ = true;
    }
  }

  // The pre-tokenizer: ByteLevel with its regex, or Split(regex) then ByteLevel without.
  SplitPattern read_pre_tokenizer(const json& p) const {
    auto byte_level = [&](const json& b, const std::string& field, bool use_regex) {
      if (b.value("type", std::string()) != "ByteLevel") bad(field + ".type", b.value("type", json()), "\"ByteLevel\"");
      if (b.value("add_prefix_space", false)) bad(field + ".add_prefix_space", true, "false");
      if (b.value("use_regex", true) != use_regex) bad(field + ".use_regex", !use_regex, use_regex ? "true" : "false");
    };
    std::string type = p.is_object() ? p.value("type", std::string()) : std::string();
    if (type == "ByteLevel") {
      byte_level(p, "pre_tokenizer", true);
      return SplitPattern::gpt2;
    }
    const char* expected = "ByteLevel, or Sequence [Split (GPT-2's, Llama 3's or Qwen2's regex), ByteLevel]";
    if (type != "Sequence" || p.at("pretokenizers").size() != 2)
      bad("pre_tokenizer", p.is_object() ? json(type) : p, expected);
    const json& s = p["pretokenizers"][0];
    if (s.value("type", std::string()) != "Split") bad("pre_tokenizer.pretokenizers[0].type", s.value("type", json()), "\"Split\"");
    if (s.value("behavior", std::string()) != "Isolated") bad("pre_tokenizer.pretokenizers[0].behavior", s.value("behavior", json()), "\"Isolated\"");
    if (s.value("invert", false)) bad("pre_tokenizer.pretokenizers[0].invert", true, "false");
    std::string re = s.at("pattern").value("Regex", std::string());
    SplitPattern split = SplitPattern::gpt2;
    if (re == kLlama3Regex) split = SplitPattern::llama3;
    else if (re == kQwen2Regex) split = SplitPattern::qwen2;
    else if (re != kGpt2Regex)
      bad("pre_tokenizer.pretokenizers[0].pattern.Regex", s["pattern"], "GPT-2's, Llama 3's or Qwen2's regex (src/data/bpe.h)");
    byte_level(p["pretokenizers"][1], "pre_tokenizer.pretokenizers[1]", false);
    return split;
  }

  // tokenizer_config.json beside the file, if it is there, into config_; for byte fallback
  // config.json's model_type, unless given.
  void read_config() {
    const std::filesystem::path dir = std::filesystem::path(path_).parent_path();
    auto object = [](const std::string& file) {
      json j = json::parse(read_whole_file(file), nullptr, false);
      if (j.is_discarded() || !j.is_object()) user_error("{}: not a JSON object", file);
      return j;
    };
    if (fallback_ && model_type_.empty() && std::filesystem::exists(dir / "config.json")) {
      const json t = object((dir / "config.json").string()).value("model_type", json());
      if (t.is_string()) model_type_ = t;
    }
    config_ = read_tokenizer_config(dir.string());
    if (!config_.is_null()) config_path_ = (dir / "tokenizer_config.json").string();
  }

  // tokenizer_config.json's eos_token, else a conventional end-of-text added token; its bos_token
  // into bos_.
  uint32_t read_eot(const std::unordered_map<std::string, uint32_t>& id_of) {
    auto token = [&](const char* key) {  // a string, or an AddedToken's content
      json t = config_.is_object() && config_.contains(key) ? config_[key] : json();
      return t.is_object() ? t.value("content", json()) : t;
    };
    json bos = token("bos_token"), eos = token("eos_token");
    if (bos.is_string() && id_of.count(bos.get<std::string>())) bos_ = id_of.at(bos.get<std::string>());
    if (eos.is_string()) {
      auto it = id_of.find(eos.get<std::string>());
      if (it == id_of.end()) user_error("{}: eos_token {} is not a token of {}", config_path_, eos.dump(), path_);
      return it->second;
    }
    for (const char* name : {"<|endoftext|>", "<|end_of_text|>", "</s>", "<|im_end|>", "<|eot_id|>"})
      for (auto& [content, id] : added_)
        if (content == name) return id;
    user_error("{}: no end-of-text token: expected tokenizer_config.json's eos_token next to it, or one of "
               "<|endoftext|>, <|end_of_text|>, </s>, <|im_end|>, <|eot_id|> in added_tokens", path_);
  }

  // --- byte fallback: a SentencePiece model converted (Llama 2, Mistral, TinyLlama) ---

  // Where "▁" goes before the text between two added tokens, and whether decode strips the
  // space it makes. transformers 5's LlamaTokenizer (tokenizer_config.json's tokenizer_class
  // LlamaTokenizer or LlamaTokenizerFast, as those models name it) ignores the file's
  // normalizer, pre-tokenizer and decoder: Metaspace(prepend_scheme "first", or "always" with
  // "legacy": true, "never" with "add_prefix_space": false), split false, the decoder stripping
  // one space where it prepends. For config.json's model_type mistral and mixtral transformers 5
  // registers its generic backend instead, which, like any other class, reads the file's own
  // pipeline: a Prepend("▁") + Replace(" ", "▁") normalizer (older conversions: every text
  // between added tokens gets "▁"), or a Metaspace pre-tokenizer; its decoder's Strip.
  void read_fallback_pipeline(const json& j) {
    if (llama_class(config_, model_type_)) {
      auto flag = [&](const char* key, bool otherwise) {  // read_tokenizer_config checked its type
        const json v = config_.value(key, json());
        return v.is_null() ? otherwise : v.get<bool>();
      };
      const bool add_prefix_space = flag("add_prefix_space", true);
      prefix_ = !add_prefix_space ? Prefix::never : flag("legacy", false) ? Prefix::always : Prefix::first;
      strip_ = add_prefix_space;
      return;
    }
    const json n = j.value("normalizer", json()), p = j.value("pre_tokenizer", json());
    const std::string space(kSpace);
    auto is = [](const json& x, const char* type) { return x.is_object() && x.value("type", "") == type; };
    auto replaces_spaces = [&](const json& r) {
      return is(r, "Replace") && r.value("pattern", json()) == json{{"String", " "}} && r.value("content", "") == space;
    };
    const char* pipeline = "a Sequence of Prepend(\"\u2581\") and Replace(\" \", \"\u2581\") (a converted SentencePiece "
                           "model's), or null with a Metaspace pre_tokenizer";
    if (!n.is_null()) {
      const json ns = is(n, "Sequence") ? n.value("normalizers", json()) : json();
      if (!ns.is_array() || ns.size() != 2 || !is(ns[0], "Prepend") || ns[0].value("prepend", "") != space ||
          !replaces_spaces(ns[1]))
        bad("normalizer", n, pipeline);
      if (!p.is_null()) bad("pre_tokenizer", p, "null (the normalizer writes the spaces)");
      prefix_ = Prefix::prepend;
    } else {
      if (!is(p, "Metaspace"))
        bad("pre_tokenizer", p, "Metaspace (a byte-fallback BPE's; or null with a Prepend + Replace normalizer)");
      if (p.value("replacement", "") != space) bad("pre_tokenizer.replacement", p.value("replacement", json()), "\"\u2581\"");
      if (p.value("split", true)) bad("pre_tokenizer.split", true, "false (the text between added tokens merged whole)");
      const std::string scheme = p.value("prepend_scheme", "always");
      if (scheme == "always") prefix_ = Prefix::always;
      else if (scheme == "first") prefix_ = Prefix::first;
      else if (scheme == "never") prefix_ = Prefix::never;
      else bad("pre_tokenizer.prepend_scheme", p["prepend_scheme"], "\"always\", \"first\" or \"never\"");
    }
    const json d = j.value("decoder", json());
    const json ds = is(d, "Sequence") ? d.value("decoders", json::array()) : json::array({d});
    for (const json& x : ds)
      if (is(x, "Strip") && x.value("content", "") == " " && x.value("start", 0) == 1 && x.value("stop", 0) == 0) strip_ = true;
  }

  // A vocabulary entry as decode writes it: "▁" a space, <0xXX> the byte.
  static std::string fallback_text(const std::string& text) {
    if (text.size() == 6 && text.starts_with("<0x") && text[5] == '>' && std::isxdigit(uint8_t(text[3])) &&
        std::isxdigit(uint8_t(text[4])))
      return std::string(1, char(std::stoi(text.substr(3, 2), nullptr, 16)));
    std::string s;
    for (size_t i = 0; i < text.size(); i++) {
      if (text.compare(i, kSpace.size(), kSpace) == 0) { s += ' '; i += kSpace.size() - 1; }
      else s += text[i];
    }
    return s;
  }

  // The characters' and bytes' tokens, and the merges as (left, right) -> (rank, merged).
  void read_fallback_model(const std::unordered_map<std::string, uint32_t>& id_of,
                           const std::vector<std::array<uint32_t, 3>>& merges) {
    for (int b = 0; b < 256; b++) {
      auto it = id_of.find(fmt::format("<0x{:02X}>", b));
      if (it == id_of.end()) bad("model.vocab", fmt::format("missing <0x{:02X}>", b), "the 256 byte tokens of byte_fallback");
      byte_id_[size_t(b)] = it->second;
    }
    for (auto& [text, id] : id_of) {
      uint32_t cp;
      const auto* s = reinterpret_cast<const unsigned char*>(text.data());
      if (!text.empty() && utf8_at(s, 0, text.size(), cp) == text.size()) char_id_[cp] = id;
      for (size_t i = 1; i < text.size() && !crosses_spaces_; i++) crosses_spaces_ = run_starts(text, i);
      crosses_lines_ |= text.find('\n') < text.size() - 1;
    }
    for (uint32_t rank = 0; rank < merges.size(); rank++)
      pairs_.emplace(uint64_t(merges[rank][0]) << 32 | merges[rank][1], std::make_pair(rank, merges[rank][2]));
  }

  // Byte fallback: the added tokens, and the text between them; `rest`: text continues a text
  // before it (no prefix at its start).
  void encode_parts(std::string_view text, bool rest, std::vector<uint32_t>& out) {
    split_added(raw_, text, out, [&](std::string_view part) {
      const bool start = part.data() == text.data();
      encode_fallback(part, start && !rest, start && rest, out);
    });
  }

  // The text between two added tokens (`first`: at the start of the text encoded; `continues`:
  // at the start of a text's rest, which gets no prefix): spaces written ▁, the prefix where
  // prefix_ puts one, then merged as one word (Metaspace's split false). Where no token holds ▁
  // after another character (SentencePiece's split_by_whitespace, Llama's), no merge crosses the
  // start of a ▁ run, so the text is merged a word at a time, with the same result, and words
  // seen before come from a cache.
  void encode_fallback(std::string_view part, bool first, bool continues, std::vector<uint32_t>& out) {
    if (part.empty()) return;
    const bool spaced = part[0] == ' ' || part.starts_with(kSpace);
    const bool prefix = !continues && (prefix_ == Prefix::prepend ||
                                       (!spaced && (prefix_ == Prefix::always || (prefix_ == Prefix::first && first))));
    text_.clear();
    if (prefix) text_ += kSpace;
    for (char c : part) {
      if (c == ' ') text_ += kSpace;
      else text_ += c;
    }
    if (crosses_spaces_) return merge_word(text_, out);
    const std::string_view t = text_;
    for (size_t start = 0, i = 1; start < t.size(); i++) {
      if (i < t.size() && !run_starts(t, i)) continue;  // a word ends where a ▁ run starts
      const std::string_view word = t.substr(start, i - start);
      start = i;
      if (word.size() > 64) { merge_word(word, out); continue; }
      auto it = cache_.find(std::string(word));
      if (it == cache_.end()) {
        if (cache_.size() > (1 << 18)) cache_.clear();
        std::vector<uint32_t> ids;
        merge_word(word, ids);
        it = cache_.emplace(std::string(word), std::move(ids)).first;
      }
      out.insert(out.end(), it->second.begin(), it->second.end());
    }
  }

  // Whether a ▁ run starts at byte i > 0 of t: ▁ there, another character before it.
  static bool run_starts(std::string_view t, size_t i) {
    const size_t n = kSpace.size();
    return t.compare(i, n, kSpace) == 0 && !(i >= n && t.compare(i - n, n, kSpace) == 0);
  }

  // BPE over a word's characters, as tokenizers' BPE merges a word: the pair of lowest rank
  // first, the leftmost of equals, until none merges; a character with no token is its bytes'
  // tokens, a byte that is not UTF-8 its own. A heap of candidate pairs and a linked list of
  // symbols: O(n log n).
  void merge_word(std::string_view word, std::vector<uint32_t>& out) {
    syms_.clear();
    auto push = [&](uint32_t id) { syms_.push_back({id, int32_t(syms_.size()) - 1, int32_t(syms_.size()) + 1}); };
    const auto* s = reinterpret_cast<const unsigned char*>(word.data());
    for (size_t i = 0; i < word.size();) {
      uint32_t cp;
      const size_t len = utf8_at(s, i, word.size(), cp);
      if (len == 0) { push(byte_id_[s[i++]]); continue; }  // not UTF-8: the byte's token
      auto it = char_id_.find(cp);
      if (it != char_id_.end()) push(it->second);
      else for (size_t k = 0; k < len; k++) push(byte_id_[s[i + k]]);
      i += len;
    }
    syms_.back().next = -1;
    // candidates: (rank, position of the left symbol, merged id); stale ones are skipped
    heap_ = decltype(heap_)();
    auto candidate = [&](int32_t pos) {
      if (pos < 0 || syms_[size_t(pos)].next < 0) return;
      auto it = pairs_.find(uint64_t(syms_[size_t(pos)].id) << 32 | syms_[size_t(syms_[size_t(pos)].next)].id);
      if (it != pairs_.end()) heap_.push({it->second.first, pos, it->second.second});
    };
    for (int32_t k = 0; k + 1 < int32_t(syms_.size()); k++) candidate(k);
    while (!heap_.empty()) {
      const Candidate c = heap_.top();
      heap_.pop();
      Symbol& left = syms_[size_t(c.pos)];
      if (left.id == kDead || left.next < 0) continue;
      auto it = pairs_.find(uint64_t(left.id) << 32 | syms_[size_t(left.next)].id);
      if (it == pairs_.end() || it->second.second != c.merged) continue;
      Symbol& right = syms_[size_t(left.next)];
      left.id = c.merged;
      left.next = right.next;
      if (right.next >= 0) syms_[size_t(right.next)].prev = c.pos;
      right.id = kDead;
      candidate(left.prev);
      candidate(c.pos);
    }
    for (const Symbol& x : syms_)
      if (x.id != kDead) out.push_back(x.id);
  }

  // A vocabulary entry's characters as bytes; false if one is not a byte's character.
  static bool to_bytes(const std::string& text, const std::unordered_map<uint32_t, char>& byte_of, std::string& out) {
    out.clear();
    for (size_t i = 0; i < text.size();) {
      unsigned char c = uint8_t(text[i]);
      uint32_t len = c < 0x80 ? 1 : c >= 0xE0 ? 3 : 2;  // byte characters are below U+0144
      uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : (c & 0x0F);
      for (uint32_t k = 1; k < len && i + k < text.size(); k++) cp = cp << 6 | (uint8_t(text[i + k]) & 0x3F);
      auto it = byte_of.find(cp);
      if (it == byte_of.end() || c >= 0xF0) return false;
      out += it->second;
      i += len;
    }
    return true;
  }

  std::string path_, config_path_;
  std::string converted_;   // the tokenizer.json converted from a tokenizer.model (empty: path_ is one)
  std::string model_type_;  // config.json's
  json config_;  // tokenizer_config.json beside the file (null: none)
  std::vector<std::string> bytes_;  // id -> bytes (an added token: its content)
  std::vector<bool> present_;       // id -> whether it is a token
  std::vector<std::pair<std::string, uint32_t>> added_;  // (content, id) in the file's order
  AddedTokens raw_, normalized_added_;  // "normalized": false / true (content as normalised)
  bool nfc_ = false;                // the normalizer is NFC
  std::string normalized_;          // encode's normalised text
  std::unique_ptr<BytePairEncoder> bpe_;
  uint32_t eot_ = 0;
  int64_t bos_ = -1;  // tokenizer_config.json's bos_token, where it is a token
  // byte fallback
  enum class Prefix { never, first, always, prepend };  // Metaspace's schemes; prepend: the normalizer's
  bool fallback_ = false;
  Prefix prefix_ = Prefix::never;
  bool strip_ = false;  // decode drops the text's first character where it is a space
  static constexpr std::string_view kSpace = "\u2581";  // Metaspace's replacement of a space
  bool crosses_spaces_ = false;  // a token holds ▁ after another character
  bool crosses_lines_ = false;   // a token holds '\n' before its last byte
  std::string text_;             // encode's text with its spaces replaced
  std::unordered_map<std::string, std::vector<uint32_t>> cache_;  // a word's ids
  std::unordered_map<uint32_t, uint32_t> char_id_;  // a code point's token
  std::array<uint32_t, 256> byte_id_{};             // <0xXX>
  std::unordered_map<uint64_t, std::pair<uint32_t, uint32_t>> pairs_;  // (left, right) -> (rank, merged)
  static constexpr uint32_t kDead = UINT32_MAX;
  struct Symbol { uint32_t id; int32_t prev, next; };
  struct Candidate {
    uint32_t rank;
    int32_t pos;
    uint32_t merged;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<Symbol> syms_;
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap_;
};

// A SentencePiece model file as transformers 5's SentencePieceExtractor reads it, from the
// protocol buffer's wire format: ModelProto's pieces (field 1: piece 1, type 3) and its
// trainer_spec's model_type (field 2, 3).
struct SpModel {
  std::vector<std::pair<std::string, int>> pieces;  // (piece, type: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte)
  int model_type = 1;                               // 1 unigram, 2 BPE
};
SpModel read_sp_model(const std::string& path) {
  const std::string data = read_whole_file(path);
  auto fail = [&] { user_error("{}: not a SentencePiece model (its protocol buffer ends early)", path); };
  // f(field, wire type, varint value, bytes) for each field of the message s
  auto fields = [&](std::string_view s, auto&& f) {
    size_t i = 0;
    auto varint = [&] {
      uint64_t v = 0;
      for (int shift = 0; shift < 64; shift += 7) {
        if (i >= s.size()) break;
        const uint8_t b = uint8_t(s[i++]);
        v |= uint64_t(b & 0x7F) << shift;
        if (!(b & 0x80)) return v;
      }
      fail();
      return v;
    };
    while (i < s.size()) {
      const uint64_t key = varint(), wire = key & 7;
      uint64_t value = 0, n = wire == 1 ? 8 : wire == 5 ? 4 : 0;
      if (wire == 0) value = varint();
      else if (wire == 2) n = varint();
      else if (wire != 1 && wire != 5) fail();
      if (n > s.size() - i) fail();
      f(key >> 3, wire, value, wire == 2 ? s.substr(i, n) : std::string_view());
      i += n;
    }
  };
  SpModel m;
  fields(data, [&](uint64_t field, uint64_t wire, uint64_t, std::string_view bytes) {
    if (field == 1 && wire == 2) {
      std::string piece;
      int type = 1;
      fields(bytes, [&](uint64_t f, uint64_t w, uint64_t v, std::string_view b) {
        if (f == 1 && w == 2) piece = b;
        else if (f == 3 && w == 0) type = int(v);
      });
      m.pieces.emplace_back(piece, type);
    } else if (field == 2 && wire == 2) {
      fields(bytes, [&](uint64_t f, uint64_t w, uint64_t v, std::string_view) {
        if (f == 3 && w == 0) m.model_type = int(v);
      });
    }
  });
  return m;
}

// A SentencePiece BPE model converted as transformers 5 converts a tokenizer.model alone for its
// LlamaTokenizer: the pieces a BPE vocabulary with byte fallback; the merges every split of a
// piece into two pieces, by the piece's id and then the left part's length in characters
// (generate_merges); unknown and control pieces special added tokens, user-defined ones added
// tokens; the BOS the LlamaTokenizer reads tokenizer_config.json for (its Metaspace scheme and
// decoder Strip, which it reads there too, HfTokenizer adds once it has read them).
// null where it is not a BPE model with the 256 byte pieces (which transformers reads otherwise).
json convert_sentencepiece(const std::string& path) {
  const SpModel m = read_sp_model(path);
  if (m.model_type != 2) return nullptr;
  json vocab = json::object(), added = json::array();
  std::unordered_map<std::string, int64_t> id_of;
  int bytes = 0;
  for (size_t id = 0; id < m.pieces.size(); id++) {
    const auto& [piece, type] = m.pieces[id];
    vocab[piece] = id;
    id_of.emplace(piece, int64_t(id));
    bytes += type == 6;
    if (type == 2 || type == 3 || type == 4)
      added.push_back({{"id", id}, {"content", piece}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                       {"normalized", false}, {"special", type != 4}});
  }
  if (bytes != 256) return nullptr;
  json merges = json::array();
  for (const auto& [piece, type] : m.pieces)
    for (size_t k = 1; k < piece.size(); k++)
      if ((uint8_t(piece[k]) & 0xC0) != 0x80 && id_of.count(piece.substr(0, k)) && id_of.count(piece.substr(k)))
        merges.push_back({piece.substr(0, k), piece.substr(k)});
  json j = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added}, {"normalizer", nullptr},
            {"pre_tokenizer", {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"split", false}}},  // + prepend_scheme: HfTokenizer's
            {"post_processor", nullptr},
            {"decoder", {{"type", "Sequence"}, {"decoders", json::array({{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}},
                                                                          {"content", " "}},
                                                                         {{"type", "ByteFallback"}}, {{"type", "Fuse"}}})}}},
            {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                       {"end_of_word_suffix", nullptr}, {"fuse_unk", true}, {"byte_fallback", true}, {"ignore_merges", false},
                       {"vocab", vocab}, {"merges", merges}}}};
  // the BOS: tokenizer_config.json's add_bos_token, as for any converted model (hf_bos_prefix)
  const std::string json_path = (std::filesystem::path(path).parent_path() / "tokenizer.json").string();
  const int64_t bos = hf_bos_prefix(json_path, nullptr, int64_t(m.pieces.size()), [&](const std::string& t) {
    auto it = id_of.find(t);
    return it == id_of.end() ? int64_t(-1) : it->second;
  });
  if (bos >= 0) {
    const std::string b = m.pieces[size_t(bos)].first;
    auto special = [&](int type_id) { return json{{"SpecialToken", {{"id", b}, {"type_id", type_id}}}}; };
    auto seq = [&](const char* id, int type_id) { return json{{"Sequence", {{"id", id}, {"type_id", type_id}}}}; };
    j["post_processor"] = {{"type", "TemplateProcessing"}, {"single", {special(0), seq("A", 0)}},
                           {"pair", {special(0), seq("A", 0), special(1), seq("B", 1)}},
                           {"special_tokens", {{b, {{"id", b}, {"ids", {bos}}, {"tokens", {b}}}}}}};
  }
  return j;
}

}  // namespace

std::unique_ptr<Tokenizer> load_converted_sentencepiece(const std::string& path) {
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  json type;
  if (std::filesystem::exists(dir / "config.json")) {
    const json j = json::parse(read_whole_file((dir / "config.json").string()), nullptr, false);
    if (j.is_object()) type = j.value("model_type", json());
  }
  if (!llama_class(read_tokenizer_config(dir.string()), type.is_string() ? type.get<std::string>() : ""))
    return nullptr;
  json j = convert_sentencepiece(path);
  if (j.is_null()) return nullptr;
  return std::make_unique<HfTokenizer>(path, "", std::move(j));
}

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path, const std::string& model_type) {
  if (!std::filesystem::exists(path)) user_error("{}: missing: a Hugging Face tokenizer.json", path);
  return std::make_unique<HfTokenizer>(path, model_type);
}

}  // namespace frugal
