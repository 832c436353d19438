// Hugging Face tokenizer.json files with a byte-level BPE model (GPT-2, SmolLM, Llama 3, Qwen2
// style): the file's vocabulary, merges, added tokens, normalizer (none or NFC) and pre-tokenizer
// read into bpe.h's encoder; what frugal cannot reproduce exactly is a UserError naming the file
// and the field (see data.h).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>

#include "data/bpe.h"

namespace frugal {

namespace {

using nlohmann::json;

class HfTokenizer final : public Tokenizer {
 public:
  explicit HfTokenizer(const std::string& path) : path_(path) {
    json j;
    try {
      j = json::parse(read_whole_file(path));
    } catch (const json::exception& e) {
      user_error("{}: not JSON: {}", path, e.what());
    }
    try {
      read(j);
    } catch (const json::exception& e) {
      user_error("{}: not a Hugging Face tokenizer.json: {}", path, e.what());
    }
  }

  TokenizerKind kind() const override { return TokenizerKind::hf_bpe; }
  int vocab_size() const override { return int(bytes_.size()); }
  uint32_t eot() const override { return eot_; }
  int64_t bos() const override { return bos_; }

  // As tokenizers: the added tokens not normalized are found in the text as written, the text
  // between them normalised, the normalized added tokens found in that, and the rest split and
  // merged.
  void encode(std::string_view text, std::vector<uint32_t>& out) override {
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
    return s;
  }

  void save_files(const std::string& dir) const override {
    std::string jinja = (std::filesystem::path(path_).parent_path() / kChatTemplateFile).string();
    for (auto [from, name] : {std::pair{path_, "tokenizer.json"}, std::pair{config_path_, "tokenizer_config.json"},
                              std::pair{jinja, kChatTemplateFile}}) {
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
      bad("model.type", model["type"], "\"BPE\" (frugal reads byte-level BPE tokenizer.json files)");
    if (j.contains("normalizer")) read_normalizer(j["normalizer"]);
    if (model.value("byte_fallback", false)) bad("model.byte_fallback", true, "false (a byte-level BPE)");
    if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() != 0)
      bad("model.dropout", model["dropout"], "null");
    for (const char* f : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (model.contains(f) && !model[f].is_null() && model[f] != "") bad(std::string("model.") + f, model[f], "null");
    SplitPattern split = read_pre_tokenizer(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json());

    // the vocabulary: each token's characters are bytes in GPT-2's byte_level_chars form
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
      std::string raw;
      bool byte_level = to_bytes(text, byte_of, raw);
      bytes_[id] = byte_level ? raw : text;
      present_[id] = true;
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
    bpe_ = std::make_unique<BytePairEncoder>(mergeable, merges, split, model.value("ignore_merges", false), path_);

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

  // tokenizer_config.json's eos_token, else a conventional end-of-text added token; its bos_token
  // into bos_.
  uint32_t read_eot(const std::unordered_map<std::string, uint32_t>& id_of) {
    std::string config = (std::filesystem::path(path_).parent_path() / "tokenizer_config.json").string();
    if (std::filesystem::exists(config)) {
      config_path_ = config;
      json c;
      try {
        c = json::parse(read_whole_file(config));
      } catch (const json::exception& e) {
        user_error("{}: not JSON: {}", config, e.what());
      }
      auto token = [&](const char* key) {  // a string, or an AddedToken's content
        json t = c.is_object() && c.contains(key) ? c[key] : json();
        return t.is_object() ? t.value("content", json()) : t;
      };
      json bos = token("bos_token"), eos = token("eos_token");
      if (bos.is_string() && id_of.count(bos.get<std::string>())) bos_ = id_of.at(bos.get<std::string>());
      if (eos.is_string()) {
        auto it = id_of.find(eos.get<std::string>());
        if (it == id_of.end()) user_error("{}: eos_token {} is not a token of {}", config, eos.dump(), path_);
        return it->second;
      }
    }
    for (const char* name : {"<|endoftext|>", "<|end_of_text|>", "</s>", "<|im_end|>", "<|eot_id|>"})
      for (auto& [content, id] : added_)
        if (content == name) return id;
    user_error("{}: no end-of-text token: expected tokenizer_config.json's eos_token next to it, or one of "
               "<|endoftext|>, <|end_of_text|>, </s>, <|im_end|>, <|eot_id|> in added_tokens", path_);
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
  std::vector<std::string> bytes_;  // id -> bytes (an added token: its content)
  std::vector<bool> present_;       // id -> whether it is a token
  std::vector<std::pair<std::string, uint32_t>> added_;  // (content, id) in the file's order
  AddedTokens raw_, normalized_added_;  // "normalized": false / true (content as normalised)
  bool nfc_ = false;                // the normalizer is NFC
  std::string normalized_;          // encode's normalised text
  std::unique_ptr<BytePairEncoder> bpe_;
  uint32_t eot_ = 0;
  int64_t bos_ = -1;  // tokenizer_config.json's bos_token, where it is a token
};

}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path) {
  if (!std::filesystem::exists(path)) user_error("{}: missing: a Hugging Face tokenizer.json", path);
  return std::make_unique<HfTokenizer>(path);
}

}  // namespace frugal
