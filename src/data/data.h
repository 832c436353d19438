// data: token shards (llm.c's .bin layout), the batch loader, and the tokenizers (byte-level,
// GPT-2's BPE from a tiktoken rank file, other tiktoken rank files, Hugging Face tokenizer.json
// byte-level BPE, SentencePiece).
//
// Shard file: a header of 256 little-endian int32 — [magic, version, num_tokens, 0...] — then
// num_tokens tokens. magic 20240520 / version 1: uint16 tokens (llm.c GPT-2 shards);
// magic 20240801 / version 7: uint32 tokens (llm.c's Llama-3 shards).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/core.h"

namespace frugal {

inline constexpr int32_t kShardMagic16 = 20240520, kShardVersion16 = 1;
inline constexpr int32_t kShardMagic32 = 20240801, kShardVersion32 = 7;
inline constexpr int kShardHeaderInts = 256;

// Writes tokens as one shard (uint16 when every id fits, else uint32), atomically.
void write_shard(const std::string& path, const std::vector<uint32_t>& tokens);


// A shard written as its tokens come: to "<path>.tmp", the header patched and the file flushed,
// checked and renamed by finish(); destroyed unfinished (an error, a full disk), nothing is left.
// wide: uint32 ids (vocabularies above 65,536), else uint16.
class ShardWriter {
 public:
  ShardWriter(const std::string& path, bool wide);
  void append(const uint32_t* tokens, size_t n);
  int64_t tokens() const { return n_; }
  struct Done { int64_t tokens, bytes; uint64_t checksum; };
  Done finish();
  // Without a file: only counts and sums what a shard of these tokens would hold.
  static ShardWriter dry(bool wide) { return ShardWriter(wide); }

 private:
  explicit ShardWriter(bool wide) : wide_(wide) {}
  void flush();
  std::unique_ptr<AtomicFile> file_;
  bool wide_;
  int64_t n_ = 0;
  uint64_t sum_ = kChecksumStart;
  std::vector<char> buf_;
  size_t used_ = 0;  // tokens in buf_
};

// A prepared directory's manifest (prepare_corpus): dir/manifest.json lists its shards in order,
// each {"file", "split", "tokens", "bytes", "checksum" (16 hex digits)}, with the tokenizer, the
// options, the sources and "complete" (false while prepare runs or after it was interrupted).
inline constexpr const char* kManifest = "manifest.json";

// A shard mapped read-only. Checks the header, the body size and (when vocab_size > 0) that
// every token id is below vocab_size; throws UserError naming the file otherwise.
class TokenShard {
 public:
  TokenShard(const std::string& path, int64_t vocab_size);
  TokenShard(TokenShard&&) noexcept;
  TokenShard(const TokenShard&) = delete;
  ~TokenShard();
  int64_t size() const { return n_; }
  uint32_t operator[](int64_t i) const { return wide_ ? u32_[i] : u16_[i]; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  int64_t n_ = 0;
  bool wide_ = false;
  const uint16_t* u16_ = nullptr;
  const uint32_t* u32_ = nullptr;
};

// The shard files a pattern names: a glob ("data/kjv/train_*.bin"), a directory, or a file.
// `field` (e.g. "data.train") names the setting in errors; a directory that holds both splits
// gives data.train its train_* shards and data.val its val_* ones (a directory with a manifest:
// in its order; an unfinished one is refused). A TokenShard in a directory with a manifest is
// checked against it on open (listed, token count, checksum): a corrupt shard is refused by name.
std::vector<std::string> resolve_shards(const std::string& pattern, const std::string& field);

// Where documents are cut apart (data.document_mask): at each `sep`, after it or before it.
struct DocumentCut { int32_t sep; bool after; };

// Yields batches of B windows of T+1 tokens. A shard of n tokens holds (n-1)/T windows,
// window w covering tokens [w*T, w*T+T]. With shuffle, every epoch visits the shards in a
// seeded random order and each shard's windows in a seeded random order; without, in file
// order (validation). Each rank of `world` reads a disjoint part of every global batch.
class DataLoader {
 public:
  DataLoader(const std::vector<std::string>& files, int64_t vocab_size, int B, int T,
             uint64_t seed, bool shuffle, int rank = 0, int world = 1);
  // inputs(B,T), targets(B,T); a target is -1 where its shard's loss mask says not trained on,
  // and with documents cut after their separator where it starts another (mask_document_starts)
  void next(int32_t* inputs, int32_t* targets);
  // data.document_mask (sep -1: off). Records (shards with loss masks) end after `sep`, and each
  // window then holds whole records, packed per shard best fit decreasing as TRL's pack_dataset
  // ("bfd") packs them: the longest first, each into the window with the least room that holds it
  // (the oldest of those), else a new one; the rest of a window is padding (input 0, target -1). A
  // record longer than T+1 tokens is cut to it, as TRL truncates it (truncated() counts them).
  // UserError if fewer windows than a global batch. Once, before the first batch.
  void set_documents(DocumentCut cut);
  bool records() const;  // whether the shards are instruction records (they carry loss masks)
  int64_t truncated() const { return truncated_; }
  void reset();  // back to the first batch of epoch 0
  int64_t num_windows() const { return total_windows_; }
  int batch() const { return B_; }
  int seq_len() const { return T_; }
  int world() const { return world_; }
  int64_t epoch() const { return epoch_; }
  // Where the next batch starts (for checkpoints): the shard and window order follow from the
  // seed, so the epoch and the positions in both orders are the whole state.
  struct Position { int64_t epoch = 0, shard = 0, window = 0; };
  Position position() const { return {epoch_, shard_pos_, window_pos_}; }
  // Continues from a position taken on the same files; UserError naming `where` if it is out of range.
  void seek(const Position& p, const std::string& where);

 private:
  void start_epoch();
  void start_shard();
  int64_t take_window();  // index of the next window in its shard, moving to the next shard/epoch
  int64_t windows_in(int64_t shard) const;

  std::vector<TokenShard> shards_;
  std::vector<std::vector<uint8_t>> masks_;  // per shard: its loss mask, or empty (none)
  int B_, T_, rank_, world_;
  uint64_t seed_;
  bool shuffle_;
  int64_t total_windows_ = 0;
  int64_t epoch_ = 0, shard_pos_ = 0, window_pos_ = 0;
  std::vector<int64_t> shard_order_, window_order_;
  DocumentCut cut_{-1, false};
  // Whole-record windows, per shard (none: T+1-token windows of the stream): window w holds the
  // records (start, tokens) records[first[w]] .. records[first[w + 1] - 1], in that order.
  struct RecordWindows { std::vector<std::pair<int64_t, int64_t>> records; std::vector<int64_t> first; };
  std::vector<RecordWindows> record_windows_;
  int64_t truncated_ = 0;
};

// Documents masked apart after each separator `sep` (data.document_mask, DocumentCut::after;
// Model::set_documents): the target at a separator is the next document's first token, which the
// finished one cannot predict: not trained (-1), as transformers' DataCollatorWithFlattening
// leaves it. (Documents cut before their end of text start with it, and its target is the
// document's first token, predicted from nothing before it: trained.)
void mask_document_starts(const int32_t* inputs, int32_t* targets, int64_t n, int32_t sep);

// Byte-level tokenizer: ids 0..255 are bytes, 256 is end of text (between documents).
inline constexpr int kByteVocab = 257, kByteEot = 256;
void byte_encode(std::string_view text, std::vector<uint32_t>& out);
std::string byte_decode(const std::vector<int32_t>& ids);

// ---- tokenizers ----------------------------------------------------------------------------
// text <-> token ids, with an exact round trip: decode(encode(s)) == s for any bytes s.
// (A pretrained tokenizer.json or SentencePiece model may normalise: see each below.)
enum class TokenizerKind { byte, gpt2, sentencepiece, hf_bpe, tiktoken };

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual TokenizerKind kind() const = 0;
  virtual int vocab_size() const = 0;
  virtual uint32_t eot() const = 0;  // separates documents in a token stream
  // The id transformers' config.json names bos_token_id: a tokenizer.json's tokenizer_config.json
  // bos_token, GPT-2's end of text; -1: none.
  virtual int64_t bos() const { return -1; }
  // The token transformers' tokenizer puts before every text it encodes (add_special_tokens=True:
  // Llama 2's <s>, Llama 3's <|begin_of_text|>); -1: none (GPT-2, Qwen2, SmolLM). prepare starts
  // each document and plain record with it and sample its prompt, as the model was pretrained.
  // As transformers 5 reads it: from tokenizer.json's post_processor (a TemplateProcessing,
  // alone or in a Sequence, whose single template starts with one special token), or for a
  // SentencePiece tokenizer.model with no tokenizer.json beside it from tokenizer_config.json's
  // add_bos_token (and bos_token).
  int64_t bos_prefix() const { return bos_prefix_; }
  void set_bos_prefix(int64_t id) { bos_prefix_ = id; }
  virtual void encode(std::string_view text, std::vector<uint32_t>& out) = 0;  // appends
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual bool has_id(int32_t id) const { return id >= 0 && id < vocab_size(); }  // decode takes it
  virtual void save_files(const std::string& dir) const {}  // what load_tokenizer(dir) reads
  virtual std::string split_pattern() const { return {}; }  // tiktoken: the pattern's name
  // A byte-fallback tokenizer.json's model directory's config.json model_type, which decides how
  // transformers reads it (see load_hf_tokenizer); empty for the others.
  virtual std::string model_type() const { return {}; }
  // Whether text cut after a '\n' that stands between two printable ASCII characters encodes,
  // piece by piece (the first by encode, the rest by encode_rest), to the whole text's ids (true
  // of the split regexes here and of a byte-fallback tokenizer.json whose tokens hold no '\n'
  // before their end; not of a SentencePiece model with a dummy prefix). prepare cuts long
  // documents there.
  virtual bool cuts_at_lines() const { return true; }
  // Appends the ids of text that continues a text encoded before it, cut there by prepare (see
  // cuts_at_lines): a byte-fallback tokenizer.json puts no "▁" before it.
  virtual void encode_rest(std::string_view text, std::vector<uint32_t>& out) { encode(text, out); }

 protected:
  int64_t bos_prefix_ = -1;
};

// The text of ids that continue `context` (the prompt's last token): decode(context + ids) past
// decode(context). A SentencePiece-style decoder drops the space its prefix made at the start of
// a text; a continuation keeps it ("And God" + " said").
std::string decode_continuation(const Tokenizer& tok, const std::vector<int32_t>& context, const std::vector<int32_t>& ids);

// GPT-2's byte-level BPE, read from dir/gpt2.tiktoken: a tiktoken rank file (one "BASE64_TOKEN
// RANK" line per token, 50,256 of them; scripts/setup.sh takes OpenAI's from PyPI's
// openai-whisper into data/gpt2), with GPT-2's pattern and <|endoftext|> = 50256, the ids of
// tiktoken's gpt2 encoding. Text is split by GPT-2's regex
//   '(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s
// (the classes as tiktoken's regex engine has them: \s is White_Space; bytes that are not UTF-8
// count as punctuation), then each piece is merged as tiktoken merges; pieces seen before come
// from a cache. A malformed rank file is a UserError naming the file and the line.
inline constexpr int kGpt2Vocab = 50257, kGpt2Eot = 50256;
inline constexpr const char* kGpt2Dir = "data/gpt2";
inline constexpr const char* kGpt2Ranks = "gpt2.tiktoken";
std::unique_ptr<Tokenizer> make_gpt2_tokenizer(const std::string& dir);
std::unique_ptr<Tokenizer> make_byte_tokenizer();

// Another tiktoken rank file, with its pre-tokenisation pattern named: gpt2 (r50k/p50k),
// cl100k, llama3 (Llama 3's original tokenizer.model is a rank file), qwen2 (regexes in
// src/data/bpe.h). Ordinary text only, as tiktoken's encode_ordinary. <|endoftext|> (eot) is the
// id after the last rank, except cl100k_base's own (100,256 ranks): 100257, vocabulary 100277.
// In a shard directory the file is copied to tokenizer.tiktoken.
inline constexpr const char* kTiktokenRanks = "tokenizer.tiktoken";
std::unique_ptr<Tokenizer> make_tiktoken_tokenizer(const std::string& path, const std::string& pattern);

// A Hugging Face tokenizer.json with a byte-level BPE model (GPT-2, SmolLM, Llama 3 style):
// model.vocab and model.merges (as "a b" strings or ["a", "b"] pairs), model.ignore_merges,
// added_tokens, and the pre_tokenizer ByteLevel (GPT-2's regex) or Sequence[Split(regex,
// Isolated), ByteLevel(use_regex false)] with Llama 3's or Qwen2's regex. encode(text) gives
// tokenizers' encode(text, add_special_tokens=False).ids: added tokens spelled in the text are
// those tokens (leftmost, longest first), the text between them is split and merged; no BOS or
// post-processing. eot: tokenizer_config.json's eos_token (next to the file) if there is one, else
// the first of <|endoftext|>, <|end_of_text|>, </s>, <|im_end|>, <|eot_id|> among the added
// tokens. The normalizer may be null or NFC (Qwen2's; also a Sequence of NFC alone): text is
// NFC-normalised before it is split (added tokens with "normalized": false are found in the text
// as written first, those with true in the normalised text, as tokenizers does). Anything else
// (another normalizer, a WordPiece/Unigram model, lstrip/rstrip added tokens, another regex) is
// a UserError naming the file and the field. Byte-level, so decode(encode(s)) == s, and with NFC
// for text that is NFC already.
// A BPE model with byte_fallback (a SentencePiece model converted: Llama 2, TinyLlama, Mistral) is
// read as transformers 5 reads it. With tokenizer_config.json's tokenizer_class LlamaTokenizer(Fast)
// (unless config.json's model_type is mistral or mixtral, for which transformers 5 registers its
// generic backend): only the vocabulary, merges and added tokens; the text between added tokens
// is written with "▁" for spaces and one "▁" before it (its "legacy": at the start of the text
// only, or after every added token; "add_prefix_space": false: never) unless it starts with a
// space. Without that class: the file's Prepend + Replace normalizer or Metaspace pre-tokenizer
// (split false). Then BPE over its characters, a character with no token as its UTF-8 bytes'
// <0xXX> tokens (a byte that is not UTF-8 as its own); decode drops the leading space the prefix
// made. In a shard directory: tokenizer.json (and tokenizer_config.json, chat_template.jinja).
// model_type: config.json's model_type (empty: that of the config.json beside the file, if any).
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path, const std::string& model_type = "");

// Unicode NFC of text (canonical decomposition, reordering and composition), as Hugging Face
// tokenizers' NFC normalizer gives it, with its Unicode tables (older than Python's: see
// src/data/unicode_nfc.inc). Bytes that are not UTF-8 are kept, and nothing composes across them.
// A run that NFC cannot change (ASCII, most text) is copied as it is.
void nfc_append(std::string_view text, std::string& out);
std::string nfc(std::string_view text);

// A tokenizer.model alone in a model directory whose tokenizer_config.json names LlamaTokenizer
// (or LlamaTokenizerFast; config.json's model_type not mistral or mixtral), where it is a BPE model
// with byte fallback: converted as transformers 5 converts it, the byte-fallback tokenizer.json
// load_hf_tokenizer reads (save_files writes it out); else null.
std::unique_ptr<Tokenizer> load_converted_sentencepiece(const std::string& model_path);

// A pretrained tokenizer from PATH: a tokenizer.json, a SentencePiece tokenizer.model, a tiktoken
// rank file (*.tiktoken, or a tokenizer.model that is one, as Llama 3's), or a directory holding
// one of them (a Hugging Face model directory: tokenizer.json first, but tokenizer.model where the
// tokenizer.json is a Unigram SentencePiece model converted; a tokenizer.model alone converted
// where transformers converts it: load_converted_sentencepiece). tiktoken_pattern: the
// pattern of a rank file (empty: gpt2 for 50,256 ranks, cl100k for 100,256, llama3 for 128,000;
// other sizes need it).
std::unique_ptr<Tokenizer> load_pretrained_tokenizer(const std::string& path, const std::string& tiktoken_pattern = "");

// SentencePiece (built with Debian's libsentencepiece-dev; otherwise these throw UserError).
// train_sentencepiece learns a vocabulary of vocab_size pieces ("bpe" or "unigram") from the
// documents' lines, set for an exact round trip (no normalisation, byte fallback).
std::unique_ptr<Tokenizer> train_sentencepiece(const std::vector<std::string>& docs, int vocab_size,
                                               const std::string& model_type);
// A loaded model encodes as the Python package's encode(text) does (its own normaliser, dummy
// prefix and byte fallback, whatever the model proto says); a model without dummy prefix whose
// pieces hold no newline (frugal's own) is encoded line by line, which gives the same ids.
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_path);

// The tokenizer of a shard directory: dir/frugal_tokenizer.json names it ({"kind": "gpt2",
// "vocab_size": 50257}, "pattern" for a tiktoken file), next to its files (GPT-2's gpt2.tiktoken,
// tokenizer.tiktoken, tokenizer.model for SentencePiece, a Hugging Face tokenizer.json). Older
// shard directories name it in dir/tokenizer.json (same fields), still read; a tokenizer.json
// that is Hugging Face's (no "kind") with no frugal_tokenizer.json is that tokenizer. Neither
// file: the shards are byte-level. "bos_prefix": the tokenizer's (Tokenizer::bos_prefix), which
// prepare put before each document; absent: -1 (shards written before frugal added it).
inline constexpr const char* kTokenizerDescription = "frugal_tokenizer.json";
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir);
// Where data.document_mask cuts a shard's documents apart: at each end of text `sep` of the
// shard's tokenizer (described in its directory), after it (`after`) where each document ends
// with it (instruction records; text whose tokenizer starts each document with a BOS), else
// before it (text separated by it). UserError where nothing describes the tokenizer.
DocumentCut document_cut(const std::string& shard, bool records);
struct TokenizerInfo {
  std::string kind;
  int64_t vocab_size;
  std::string pattern;
  int64_t bos_prefix = -1;
  std::string model_type;  // Tokenizer::model_type of the model directory prepare read
};
TokenizerInfo tokenizer_info(const std::string& dir);  // what the description says
// Writes the tokenizer's files and then dir/frugal_tokenizer.json, each atomically.
void save_tokenizer(const std::string& dir, const Tokenizer& tok);
std::string to_string(TokenizerKind k);

}  // namespace frugal

namespace frugal {

struct PrepareStats {
  int64_t train_tokens = 0, val_tokens = 0;
  std::vector<std::string> files;
  int64_t train_docs = 0, val_docs = 0, skipped_lines = 0, invalid_utf8_docs = 0, reused_shards = 0;
  std::string chat_template;  // instruction records: the template they were rendered in
  int64_t bos = -1;           // the tokenizer's BOS, put before each document or plain record; -1: none
};

struct TokenizerOptions {
  TokenizerKind kind = TokenizerKind::byte;
  std::string gpt2_dir = kGpt2Dir;  // where gpt2.tiktoken is
  int vocab_size = 0;               // sentencepiece: train a vocabulary of this size
  std::string model_type = "bpe";   // sentencepiece: bpe or unigram
  std::string pretrained;           // a pretrained tokenizer (load_pretrained_tokenizer): kind ignored
  std::string tiktoken_pattern;     // its pattern, for a tiktoken rank file
};

// How prepare_corpus splits and writes. The split is by whole documents (val_fraction: a
// document is validation when a hash of (seed, its index) falls below the fraction; val_docs:
// exactly that many, the smallest hashes, after a counting pass over the input), or, with
// val_every, by 8192-token chunks of the whole stream (every val_every-th chunk; a document may
// straddle both: for a corpus of one document). None set: val_every 20 for a single text
// document (one .txt file, the KJV), else val_fraction 0.01. instruct: every input is .jsonl
// instruction records (see below), a record is a document, and each shard gets its loss mask.
struct CorpusOptions {
  int val_every = 0;
  double val_fraction = 0;
  int64_t val_docs = 0;
  uint64_t seed = 1;
  int64_t shard_tokens = 100'000'000;
  int threads = 0;               // 0: every core
  std::string field = "text";    // .jsonl: the field that holds a document's text
  bool skip_bad_lines = false;   // .jsonl: count and skip a line that is not JSON or lacks the field
  bool progress = false;         // a progress line on stderr
  bool instruct = false;         // .jsonl instruction records: shards with loss masks
  std::string chat_template;     // instruct: a Jinja file to render them with, not the tokenizer's
};

// Streams the inputs (files, directories and globs of .txt and .jsonl, plain, .gz or .zst; an
// empty list means the King James Bible from Debian's bible-kjv) through the tokenizer on
// opt.threads threads into out_dir/train_NNN.bin and val_NNN.bin (shards of opt.shard_tokens
// tokens, uint16 where the vocabulary fits, else uint32), the tokenizer's description (see
// load_tokenizer) and manifest.json. A .txt file is one document, a .jsonl line one document
// (blank lines skipped); end of text stands between the documents of a split, or, with a
// tokenizer that puts a BOS before a text (Tokenizer::bos_prefix), each document is BOS, its text
// and end of text, as transformers encodes it and TRL ends it. The shards depend
// only on the inputs and the options, bit for bit, whatever the thread count; a rerun skips the
// shards already there that verify. Memory: about threads x (8 MB of text, its tokens and a
// tokenizer) whatever the corpus size, plus the longest run of text with no line to cut at (a
// whole document for a tokenizer that cannot be cut, see cuts_at_lines).
PrepareStats prepare_corpus(const std::vector<std::string>& inputs, const std::string& out_dir,
                            const CorpusOptions& opt, const TokenizerOptions& tok = {});
inline PrepareStats prepare_corpus(const std::vector<std::string>& inputs, const std::string& out_dir,
                                   int val_every, const TokenizerOptions& tok = {}) {
  CorpusOptions o;
  o.val_every = val_every;
  return prepare_corpus(inputs, out_dir, o, tok);
}
std::string kjv_text();  // the default corpus

// ---- instruction data -------------------------------------------------------------------------
// prepare_corpus with opt.instruct reads .jsonl files, one record a line: {"prompt": ...,
// "completion": ...} or {"messages": [{"role": "system|user|assistant", "content": ...}, ...]}
// (at least one assistant message). A record is rendered by a chat template into pieces of text,
// each tokenized on its own (no merge across pieces), then EOT; the pieces of the completion /
// the assistant's turns (with their end marker) and the EOT are trained on, the rest (prompt,
// system, user, headers) is not. Records are split as documents (--val-fraction, --val-docs,
// --val-every). The template is the pretrained tokenizer's, recognised in its directory's
// Instruction records (prepare --format jsonl), one JSON object a line: {"prompt", "completion"}
// (a user's and the assistant's message) or {"messages": [{"role", "content"}...]} with roles
// system, user and assistant. With a chat template (tokenizer_config.json's "chat_template", next
// to a tokenizer.json) a record renders as transformers' apply_chat_template renders its messages
// (every field, any role: tool calls and tools' answers) and its "tools" (a list, or null);
// each assistant's message is trained on from the end of the conversation before it, with the
// assistant's header (add_generation_prompt), to the end of the conversation up to it: TRL's
// prompt/completion rule, for every assistant's turn. The rendered text is tokenized whole, and
// a token is trained on where the text's tokens before it (those of the text up to the turn's
// start) are fewer than those up to its end, as TRL counts them. Without one, the plain template:
//   prompt | completion (trained); messages: role ": " | content | "\n" (trained: the assistant's)
// each piece tokenized on its own. A record ends in end of text (the tokenizer's eot): trained on
// after a plain record (the model learns to stop), not after a template's (its end of turn ends
// the reply, and sample --chat stops there).
// Loss mask file (X.mask next to shard X.bin): a header of 256 little-endian int32 [magic
// 20240917, version 1, num_tokens, 0...], then num_tokens bytes, byte i = 1 when token i is
// trained on as a target, 0 when not. Written (atomically) before its shard.
// DataLoader: where a shard has a mask, targets[b, t] = -1 wherever the target token's mask
// byte is 0 (the loss skips targets < 0); inputs are never masked. No mask: every target counts.
inline constexpr int32_t kMaskMagic = 20240917, kMaskVersion = 1;
std::string mask_path(const std::string& shard_path);  // "dir/train_000.bin" -> "dir/train_000.mask"
void write_mask(const std::string& path, const std::vector<uint8_t>& mask);
// The mask of a shard of num_tokens tokens; UserError naming the file if it is not one.
std::vector<uint8_t> read_mask(const std::string& path, int64_t num_tokens);
// A split by chunks of kSplitChunk tokens (--val-every N: chunk k goes to validation where
// k % N == N - 1) that sent none to validation: one line saying where the first validation chunk
// starts and which --val-every would do.
inline constexpr int64_t kSplitChunk = 8192;
[[noreturn]] void too_few_for_chunk_split(int64_t tokens, int val_every);
struct RecordPiece { std::string text; bool train; };
inline constexpr const char* kChatTemplateFile = "chat_template.jinja";  // beside tokenizer_config.json
class ChatTemplate {
 public:
  ChatTemplate() = default;  // plain
  // The chat template of a pretrained tokenizer `tok` loaded from tokenizer_path: its directory's
  // chat_template.jinja, else tokenizer_config.json's chat_template (a list's "default"), as
  // transformers takes it; plain if it has none, or if tok is not a Hugging Face tokenizer.json,
  // which alone reads the template's special tokens in text (SentencePiece reads "<s>" as text).
  // A byte tokenizer takes a template too (its tokens are text, and stay so). `file`: a template
  // to use instead (prepare --chat-template), with the tokenizer's special tokens; a UserError if
  // the tokenizer cannot take it. A template that does not parse is a UserError naming the file
  // and the line.
  static ChatTemplate of(const std::string& tokenizer_path, const Tokenizer& tok, const std::string& file = "");
  const std::string& source() const;  // the template's text ("" for plain)
  bool plain() const { return !j_; }
  std::string name() const;  // "plain", or "chat_template" and a hash of it (in the manifest)
  // where it came from ("DIR/tokenizer_config.json's chat_template", "DIR/chat_template.jinja"), or
  // which plain template and why
  const std::string& note() const { return note_; }
  // One .jsonl line rendered: its pieces, each trained on or not; false, with `error` saying why
  // (without the file and line), if the line is not a record or the template refuses it.
  bool render_record(std::string_view line, std::vector<RecordPiece>& pieces, std::string& error) const;
  // `sample --chat`: a user's message (after a system message, if any) rendered with the
  // assistant's header after it, for the model to go on from, in pieces to tokenize each on its
  // own (a template's: one); and what ends the assistant's turn ("" for plain: end of text).
  std::vector<RecordPiece> chat_prompt(const std::string& user, const std::string& system = "") const;
  std::string end_of_turn() const;
  // The ids `sample` starts from, as prepare begins a record (chat) or a document: the
  // tokenizer's BOS where the template is plain (a chat template writes its own), then the chat
  // prompt's pieces or the text.
  std::vector<uint32_t> prompt_ids(Tokenizer& tok, const std::string& text, const std::string& system, bool chat) const;

 private:
  struct Jinja;
  std::shared_ptr<const Jinja> j_;
  std::string note_ = "the plain template (no chat_template next to the tokenizer)";
};

}  // namespace frugal
