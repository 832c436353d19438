// SentencePiece tokenizers (Debian's libsentencepiece-dev): training a vocabulary on a corpus,
// and encoding/decoding with a trained or pretrained model. Trained for an exact round trip: no
// normalisation, spaces kept as they are, no dummy prefix, and bytes for anything outside the
// vocabulary; a pretrained model (Llama 2's) encodes as its proto says.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <filesystem>

#include "data/bpe.h"

namespace frugal {

namespace {

// The training sentences: the documents' lines.
class LineIterator final : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<std::string>& docs) : docs_(docs) { advance(); }
  bool done() const override { return doc_ >= docs_.size(); }
  void Next() override { advance(); }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  void advance() {  // the next non-empty line
    while (doc_ < docs_.size()) {
      const std::string& d = docs_[doc_];
      size_t end = d.find('\n', pos_);
      if (end == std::string::npos) end = d.size();
      line_.assign(d, pos_, end - pos_);
      pos_ = end + 1;
      if (pos_ > d.size()) { doc_++; pos_ = 0; }
      if (!line_.empty()) return;
    }
  }
  const std::vector<std::string>& docs_;
  size_t doc_ = 0, pos_ = 0;
  std::string line_;
};

class SpTokenizer final : public Tokenizer {
 public:
  // from a model file, or (path empty) from the serialized model `proto`
  SpTokenizer(const std::string& path, const std::string& proto) {
    auto st = path.empty() ? sp_.LoadFromSerializedProto(proto) : sp_.Load(path);
    if (!st.ok()) user_error("{}: cannot load the SentencePiece model: {}", path, st.ToString());
    // Line by line only where that gives the whole text's ids: no dummy prefix (a line would
    // get one) and no piece that holds a newline.
    std::vector<std::string> pieces;
    sp_.Encode("a", &pieces);
    by_line_ = !pieces.empty() && pieces[0] == "a";
    for (int id = 0; id < sp_.GetPieceSize() && by_line_; id++)
      by_line_ = sp_.IdToPiece(id).find('\n') == std::string::npos;
  }
  TokenizerKind kind() const override { return TokenizerKind::sentencepiece; }
  int vocab_size() const override { return sp_.GetPieceSize(); }
  uint32_t eot() const override { return uint32_t(sp_.eos_id()); }
  // Line by line where that is exact (a unigram lattice over a whole book would be large), else
  // the whole text in one call; ids of the pieces.
  void encode(std::string_view text, std::vector<uint32_t>& out) override {
    for (size_t pos = 0; pos < text.size();) {
      size_t end = by_line_ ? text.find('\n', pos) : std::string_view::npos;
      end = end == std::string_view::npos ? text.size() : end + 1;
      auto st = sp_.Encode(text.substr(pos, end - pos), &ids_);
      FRUGAL_CHECK(st.ok(), "sentencepiece encode: {}", st.ToString());
      out.insert(out.end(), ids_.begin(), ids_.end());
      pos = end;
    }
  }
  bool cuts_at_lines() const override { return by_line_; }
  int64_t id_of(const std::string& piece) const {  // -1: not a piece
    const int id = sp_.PieceToId(piece);
    return sp_.IdToPiece(id) == piece ? id : -1;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t id : ids)
      if (id < 0 || id >= vocab_size()) user_error("sentencepiece: token id {} outside [0, {})", id, vocab_size());
    auto st = sp_.Decode(std::vector<int>(ids.begin(), ids.end()), &s);
    FRUGAL_CHECK(st.ok(), "sentencepiece decode: {}", st.ToString());
    return s;
  }
  void save_files(const std::string& dir) const override {
    std::string proto = sp_.serialized_model_proto();
    write_file_atomic(dir + "/tokenizer.model", proto.data(), proto.size());
  }

 private:
  sentencepiece::SentencePieceProcessor sp_;
  bool by_line_ = true;
  std::vector<int> ids_;
};

}  // namespace

std::unique_ptr<Tokenizer> train_sentencepiece(const std::vector<std::string>& docs, int vocab_size,
                                               const std::string& model_type) {
  if (model_type != "bpe" && model_type != "unigram")
    user_error("--model-type: expected bpe or unigram, got '{}'", model_type);
  if (vocab_size < 260)
    user_error("--vocab-size: expected at least 260 (256 byte pieces + 3 control pieces + 1), got {}", vocab_size);
  LineIterator lines(docs);
  std::string proto;
  auto st = sentencepiece::SentencePieceTrainer::Train(
      {{"model_type", model_type},
       {"vocab_size", std::to_string(vocab_size)},
       {"normalization_rule_name", "identity"},
       {"remove_extra_whitespaces", "false"},
       {"add_dummy_prefix", "false"},
       {"allow_whitespace_only_pieces", "true"},
       {"byte_fallback", "true"},
       {"character_coverage", "1.0"},
       {"minloglevel", "2"}},
      &lines, &proto);
  if (!st.ok()) {
    std::string msg = st.ToString();
    std::replace(msg.begin(), msg.end(), '\n', ' ');
    while (!msg.empty() && msg.back() == ' ') msg.pop_back();
    user_error("--vocab-size {}: SentencePiece training failed: {}", vocab_size, msg);
  }
  return std::make_unique<SpTokenizer>("", proto);
}

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_path) {
  auto tok = std::make_unique<SpTokenizer>(model_path, "");
  // a Hugging Face model directory's: as transformers reads the files beside the model
  const std::string json = (std::filesystem::path(model_path).parent_path() / "tokenizer.json").string();
  tok->set_bos_prefix(hf_bos_prefix(json, nullptr, tok->vocab_size(), [&](const std::string& t) { return tok->id_of(t); }));
  return tok;
}

}  // namespace frugal
