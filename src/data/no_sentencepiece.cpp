// Built without SentencePiece (libsentencepiece-dev missing): its tokenizers are unavailable.
#include "data/data.h"

namespace frugal {

std::unique_ptr<Tokenizer> train_sentencepiece(const std::vector<std::string>&, int, const std::string&) {
  user_error("--train-tokenizer: frugal was built without SentencePiece (run scripts/setup.sh and rebuild)");
}

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_path) {
  user_error("{}: frugal was built without SentencePiece (run scripts/setup.sh and rebuild)", model_path);
}

}  // namespace frugal
