"""Fixtures and references for frugal's pretrained tokenizers (src/data/hf_tokenizer.cpp,
src/data/bpe.cpp, src/data/sentencepiece.cpp): small vocabularies trained offline on a corpus with
the Python packages the models' tokenizers come from, and their ids.

  python pretrained_tokenizers.py train CORPUS.txt OUT_DIR
      OUT_DIR/gpt2/tokenizer.json     byte-level BPE, GPT-2's pre-tokenizer (ByteLevel with its
                                      regex), merges as "a b" strings, <|endoftext|>
      OUT_DIR/llama3/tokenizer.json   byte-level BPE, Llama 3's Split regex + ByteLevel,
                                      ignore_merges, merges as ["a", "b"] pairs, Llama 3's special
                                      tokens, boundary tokens (every two of BOUNDARY_CHARS: ids
                                      4000..4130) before them; tokenizer_config.json (eos
                                      <|end_of_text|>, Llama 3.1's chat template)
      OUT_DIR/qwen2/tokenizer.json    byte-level BPE, normalizer NFC, Qwen2's Split regex + ByteLevel,
                                      Qwen2's special tokens; trained on the corpus and NFC_TEXT
                                      (accented and Hangul text, written decomposed); an added
                                      token with "normalized": true whose content is not NFC;
                                      tokenizer_config.json (Qwen2.5's chat template)
      OUT_DIR/sp/tokenizer.model      SentencePiece BPE with Llama 2's settings (byte fallback,
                                      dummy prefix, identity normalisation, digits split)
      OUT_DIR/sp_hf/                  that model as a Hugging Face directory holds it: tokenizer.model,
                                      its conversion to tokenizer.json (byte fallback), class
                                      LlamaTokenizer (legacy false), TinyLlama's chat template
      OUT_DIR/sp_hf_legacy/           the same, legacy true, Llama 2's chat template
      OUT_DIR/sp_hf_file/             the same with a config.json of model_type mistral (the file's
                                      own pipeline), Mistral's template
      OUT_DIR/cl100k.tiktoken         a tiktoken rank file (the llama3 vocabulary's bytes in merge
                                      order), for tiktoken's cl100k pattern
  python pretrained_tokenizers.py ids KIND PATH IN.json OUT.json    strings -> id lists
  python pretrained_tokenizers.py text KIND PATH IN.txt OUT.bin     a text file -> uint32 ids
  python pretrained_tokenizers.py nfc IN.json OUT.json             strings -> tokenizers' NFC of each
      OUT_DIR/llama3_bos/             llama3 with Llama 3's post_processor: <|begin_of_text|> before a text
      OUT_DIR/sp_bos/                 sp's tokenizer.model with Llama 2's tokenizer_config.json (add_bos_token)
      OUT_DIR/sp_only_legacy/         sp_hf_legacy less its tokenizer.json (transformers 5 converts the model)
  python pretrained_tokenizers.py documents DIR IN.json OUT.json
      strings -> {"eos": id, "ids": [...]}: each string's ids (transformers' AutoTokenizer(DIR))
      after what AutoTokenizer(DIR) puts before a text (a BOS)
  python pretrained_tokenizers.py continue KIND PATH IN.json OUT.json
      [[context ids, ids], ...] -> the text of ids that continue the context (decode of both past
      decode of the context; null where that is not a prefix: a character's bytes cut apart);
      KIND auto or sp
  python pretrained_tokenizers.py render DIR IN.jsonl OUT.json
      instruction records in the plain template -> [{"ids": [...], "mask": [...]}] (see render())
  python pretrained_tokenizers.py chat DIR IN.jsonl OUT.json
      instruction records in DIR's chat template, by transformers and TRL's rule (see chat())
KIND: hf (tokenizers: encode(text, add_special_tokens=False).ids), sp (sentencepiece: encode(text)),
auto (a directory: transformers' AutoTokenizer(PATH)(text, add_special_tokens=False)),
tiktoken-cl100k / tiktoken-gpt2 (tiktoken.Encoding(...).encode_ordinary(text)).
"""
import base64
import json
import os
import shutil
import sys

import unicodedata

import numpy as np

import chat_templates

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
                  r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
NFC_TEXT = unicodedata.normalize("NFD", "Café naïve résumé déjà-vu Ångström Việt Nam Tiếng Việt Ελληνικά ἄλφα "
                                 "한국어 텍스트 각 닭 Jalapeño Zürich Øre ḉ ṩ ǖ\n")
BOUNDARY_CHARS = " \t\n\r'sSt1!.a"
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>", "<|im_start|>", "<|im_end|>"]


def train(corpus, out):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    import sentencepiece as spm
    os.makedirs(out, exist_ok=True)
    # GPT-2 style
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.train([corpus], trainers.BpeTrainer(vocab_size=3000, special_tokens=["<|endoftext|>"],
                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                            show_progress=False))
    os.makedirs(f"{out}/gpt2", exist_ok=True)
    j = json.loads(tok.to_str())
    j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    json.dump(j, open(f"{out}/gpt2/tokenizer.json", "w", encoding="utf-8"), ensure_ascii=False)
    # Llama 3 style
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train([corpus], trainers.BpeTrainer(vocab_size=4000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                            show_progress=False))
    tok.add_special_tokens(LLAMA3_SPECIALS)
    os.makedirs(f"{out}/llama3", exist_ok=True)
    tok.save(f"{out}/llama3/tokenizer.json")
    # boundary tokens (after the special tokens, merged last): two characters that the regex
    # splits apart in places, so that a piece boundary drawn wrongly changes the ids
    j = json.load(open(f"{out}/llama3/tokenizer.json", encoding="utf-8"))
    vocab, merges = j["model"]["vocab"], j["model"]["merges"]
    chars = [bytes_to_unicode()[ord(c)] for c in BOUNDARY_CHARS]
    next_id = len(vocab)
    for a in chars:
        for b in chars:
            if a + b not in vocab:
                vocab[a + b] = next_id
                next_id += 1
                merges.append([a, b])
    for t in j["added_tokens"]:  # after the vocabulary, as tokenizers numbers them when it loads
        t["id"] = next_id
        next_id += 1
    json.dump(j, open(f"{out}/llama3/tokenizer.json", "w", encoding="utf-8"), ensure_ascii=False)
    json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "chat_template": chat_templates.LLAMA31},
              open(f"{out}/llama3/tokenizer_config.json", "w"))
    # Qwen2 style
    from tokenizers import AddedToken, normalizers
    with open(f"{out}/nfc_corpus.txt", "w", encoding="utf-8") as f:
        f.write(open(corpus, encoding="utf-8").read() + NFC_TEXT * 200)
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train([f"{out}/nfc_corpus.txt"], trainers.BpeTrainer(
        vocab_size=3000, special_tokens=QWEN2_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.add_tokens([AddedToken("A\u030a!", normalized=True)])
    j = json.loads(tok.to_str())
    j["added_tokens"][-1]["content"] = "A\u030a!"  # as given (tokenizers writes it normalised)
    os.makedirs(f"{out}/qwen2", exist_ok=True)
    json.dump(j, open(f"{out}/qwen2/tokenizer.json", "w", encoding="utf-8"), ensure_ascii=False)
    json.dump({"bos_token": None, "eos_token": "<|endoftext|>", "chat_template": chat_templates.QWEN25},
              open(f"{out}/qwen2/tokenizer_config.json", "w"))
    # a tiktoken rank file: the 256 bytes, then the merges' results in merge order
    j = json.load(open(f"{out}/llama3/tokenizer.json", encoding="utf-8"))
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    to_bytes = lambda s: bytes(byte_of[c] for c in s)
    ranks = [bytes([b]) for b in range(256)]
    for m in j["model"]["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ")
        if to_bytes(a) + to_bytes(b) not in ranks:
            ranks.append(to_bytes(a) + to_bytes(b))
    with open(f"{out}/cl100k.tiktoken", "w") as f:
        for r, t in enumerate(ranks):
            f.write(f"{base64.b64encode(t).decode()} {r}\n")
    # SentencePiece with Llama 2's trainer settings (its tokenizer.model's trainer_spec)
    os.makedirs(f"{out}/sp", exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=f"{out}/sp/tokenizer", model_type="bpe", vocab_size=2000,
        byte_fallback=True, add_dummy_prefix=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        character_coverage=0.99995, split_by_unicode_script=True, split_by_whitespace=True,
        max_sentence_length=4192, input_sentence_size=20000, shuffle_input_sentence=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, num_threads=2)
    # as a Hugging Face model directory holds it (Llama 2, Mistral, TinyLlama): tokenizer.model and
    # its conversion to a tokenizer.json (BPE with byte fallback, as transformers' LlamaConverter
    # wrote them: the legacy Prepend + Replace normalizer, <s> first), with a chat template
    for name, legacy, model_type, template in [("sp_hf", False, None, chat_templates.ZEPHYR),
                                               ("sp_hf_legacy", True, None, chat_templates.LLAMA2),
                                               ("sp_hf_file", None, "mistral", chat_templates.MISTRAL)]:
        sp_hf(f"{out}/sp/tokenizer.model", f"{out}/{name}", legacy, model_type, template)
    # tokenizers that put a BOS before every text: Llama 3's post_processor (ByteLevel, then a
    # template starting with <|begin_of_text|>), and Llama 2's tokenizer_config.json (add_bos_token)
    shutil.copytree(f"{out}/llama3", f"{out}/llama3_bos")
    j = json.load(open(f"{out}/llama3_bos/tokenizer.json", encoding="utf-8"))
    bos = next(t["id"] for t in j["added_tokens"] if t["content"] == "<|begin_of_text|>")
    special = lambda type_id: {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": type_id}}
    seq = lambda name, type_id: {"Sequence": {"id": name, "type_id": type_id}}
    j["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing", "single": [special(0), seq("A", 0)],
         "pair": [special(0), seq("A", 0), special(1), seq("B", 1)],
         "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [bos], "tokens": ["<|begin_of_text|>"]}}}]}
    json.dump(j, open(f"{out}/llama3_bos/tokenizer.json", "w", encoding="utf-8"), ensure_ascii=False)
    os.makedirs(f"{out}/sp_bos", exist_ok=True)
    shutil.copy(f"{out}/sp/tokenizer.model", f"{out}/sp_bos/tokenizer.model")
    json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
               "eos_token": "</s>", "unk_token": "<unk>"}, open(f"{out}/sp_bos/tokenizer_config.json", "w"))
    # a tokenizer.model alone with Llama 2's tokenizer_config.json (legacy true, its chat template),
    # which transformers 5 converts to BPE with byte fallback
    os.makedirs(f"{out}/sp_only_legacy", exist_ok=True)
    shutil.copy(f"{out}/sp_hf_legacy/tokenizer.model", f"{out}/sp_only_legacy/tokenizer.model")
    shutil.copy(f"{out}/sp_hf_legacy/tokenizer_config.json", f"{out}/sp_only_legacy/tokenizer_config.json")


# A Hugging Face directory of a SentencePiece BPE model: tokenizer.model, its tokenizer.json as
# the hub's Llama 2 / TinyLlama / Mistral files are (vocabulary and merges by score, the 256 byte
# tokens, <unk> <s> </s> added, the Prepend + Replace normalizer, <s> before a text) and a
# tokenizer_config.json naming the class LlamaTokenizer (transformers 5's LlamaTokenizer then reads
# only the vocabulary and merges, with Metaspace by "legacy"), and a config.json with the
# model_type where given (mistral: transformers 5 reads the file as it is).
def sp_hf(model, out, legacy, model_type, template):
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import generate_merges, import_protobuf
    m = import_protobuf().ModelProto()
    m.ParseFromString(open(model, "rb").read())
    scores = [(p.piece, p.score) for p in m.pieces]
    vocab = {piece: i for i, (piece, _) in enumerate(scores)}
    t = Tokenizer(BPE(vocab, generate_merges(vocab, scores), unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    t.add_special_tokens([AddedToken(x, normalized=False, special=True) for x in ["<unk>", "<s>", "</s>"]])
    t.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    t.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    t.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    os.makedirs(out, exist_ok=True)
    t.save(f"{out}/tokenizer.json")
    shutil.copy(model, f"{out}/tokenizer.model")
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "tokenizer_class": "LlamaTokenizer", "chat_template": template}
    if legacy is not None:
        config["legacy"] = legacy
    json.dump(config, open(f"{out}/tokenizer_config.json", "w"))
    if model_type:
        json.dump({"model_type": model_type}, open(f"{out}/config.json", "w"))


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def encoder(kind, path):
    if kind == "hf":
        from tokenizers import Tokenizer
        t = Tokenizer.from_file(path)
        return lambda s: t.encode(s, add_special_tokens=False).ids
    if kind == "sp":
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=path)
        return lambda s: sp.encode(s)
    if kind == "auto":  # transformers' AutoTokenizer of the directory
        from transformers import AutoTokenizer
        t = AutoTokenizer.from_pretrained(path)
        return lambda s: t(s, add_special_tokens=False)["input_ids"]
    if kind.startswith("tiktoken-"):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe
        ranks = load_tiktoken_bpe(path)
        pat = {"cl100k": CL100K_PATTERN, "gpt2": R50K_PATTERN}[kind[len("tiktoken-"):]]
        enc = tiktoken.Encoding("x", pat_str=pat, mergeable_ranks=ranks, special_tokens={})
        return lambda s: enc.encode_ordinary(s)
    sys.exit(f"unknown kind {kind}")


def eot_of(t, path):
    config = os.path.join(os.path.dirname(path), "tokenizer_config.json")
    if os.path.exists(config):
        eos = json.load(open(config))["eos_token"]
        return t.token_to_id(eos if isinstance(eos, str) else eos["content"])
    # the first conventional end-of-text token, as frugal picks it
    return next(t.token_to_id(n) for n in ["<|endoftext|>", "<|end_of_text|>", "</s>", "<|im_end|>", "<|eot_id|>"]
                if t.token_to_id(n) is not None)


def messages_of(r):
    if "messages" in r:
        return r["messages"]
    return [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]


# Instruction records in frugal's plain template (src/data/instruct.cpp): the text pieces of a
# record, each with whether it is trained on; the tokenizer's BOS where transformers' tokenizer
# puts one before a text (as TRL encodes a prompt; not trained on), ids of each piece (DIR's
# tokenizer.json, else its tokenizer.model as transformers 5 converts it), then EOT (trained on).
def render(directory, src, dst):
    from transformers import AutoTokenizer
    auto = AutoTokenizer.from_pretrained(directory)
    bos = auto("")["input_ids"]
    if os.path.exists(f"{directory}/tokenizer.json"):
        from tokenizers import Tokenizer
        t = Tokenizer.from_file(f"{directory}/tokenizer.json")
        encode = lambda text: t.encode(text, add_special_tokens=False).ids
        eot = eot_of(t, f"{directory}/tokenizer.json")
    else:  # a tokenizer.model alone: as transformers 5 converts it
        encode, eot = lambda text: auto(text, add_special_tokens=False)["input_ids"], auto.eos_token_id
    out = []
    for line in open(src, encoding="utf-8"):
        if not line.strip():
            continue
        r = json.loads(line)
        pieces = []
        for m in messages_of(r):
            train = m["role"] == "assistant"
            if "messages" in r:
                pieces += [(f"{m['role']}: ", False), (m["content"], train), ("\n", train)]
            else:
                pieces += [(m["content"], train)]
        ids, mask = list(bos), [0] * len(bos)
        for text, train in pieces:
            x = encode(text)
            ids += x
            mask += [int(train)] * len(x)
        ids.append(eot)
        mask.append(1)
        out.append({"ids": ids, "mask": mask})
    json.dump(out, open(dst, "w"))


# Instruction records in the tokenizer's chat template: the conversation as transformers'
# apply_chat_template renders it, tokenized whole; each assistant's message trained on by TRL's
# prompt/completion rule (SFTTrainer: prompt = the conversation before it with the generation
# prompt, completion = the rest of the conversation up to it; its tokens are those past the
# prompt's count); then EOT, not trained on.
def chat(directory, src, dst):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(directory)
    eot = tok.convert_tokens_to_ids(tok.eos_token)
    out = []
    for line in open(src, encoding="utf-8"):
        if not line.strip():
            continue
        r = json.loads(line)
        msgs = messages_of(r)
        text = lambda n, gen: tok.apply_chat_template(msgs[:n], tools=r.get("tools"), tokenize=False, add_generation_prompt=gen)
        count = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])
        ids = tok(text(len(msgs), False), add_special_tokens=False)["input_ids"]
        mask = [0] * len(ids)
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                for k in range(count(text(i, True)), min(count(text(i + 1, False)), len(ids))):
                    mask[k] = 1
        out.append({"ids": ids + [eot], "mask": mask + [0]})
    json.dump(out, open(dst, "w"))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "train":
        train(sys.argv[2], sys.argv[3])
    elif mode == "ids":
        enc = encoder(sys.argv[2], sys.argv[3])
        strings = json.load(open(sys.argv[4], encoding="utf-8"))
        json.dump([enc(s) for s in strings], open(sys.argv[5], "w"))
    elif mode == "text":
        enc = encoder(sys.argv[2], sys.argv[3])
        text = open(sys.argv[4], encoding="utf-8", newline="").read()
        np.asarray(enc(text), dtype="<u4").tofile(sys.argv[5])
    elif mode == "nfc":
        from tokenizers import normalizers
        strings = json.load(open(sys.argv[2], encoding="utf-8"))
        json.dump([normalizers.NFC().normalize_str(s) for s in strings], open(sys.argv[3], "w", encoding="utf-8"),
                  ensure_ascii=False)
    elif mode == "documents":
        from transformers import AutoTokenizer
        directory = sys.argv[2]
        tok = AutoTokenizer.from_pretrained(directory)
        bos = tok("")["input_ids"]
        encode = lambda s: tok(s, add_special_tokens=False)["input_ids"]
        strings = json.load(open(sys.argv[3], encoding="utf-8"))
        json.dump({"eos": tok.eos_token_id, "ids": [bos + encode(s) for s in strings]}, open(sys.argv[4], "w"))
    elif mode == "continue":  # [[context ids, ids], ...] -> the text of ids after the context's
        if sys.argv[2] == "auto":
            from transformers import AutoTokenizer
            decode = AutoTokenizer.from_pretrained(sys.argv[3]).decode
        else:
            import sentencepiece as spm
            decode = spm.SentencePieceProcessor(model_file=sys.argv[3]).decode
        pairs = json.load(open(sys.argv[4]))
        out = []
        for context, ids in pairs:
            whole, before = decode(context + ids), decode(context)
            out.append(whole[len(before):] if whole.startswith(before) else None)  # None: a byte cut apart
        json.dump(out, open(sys.argv[5], "w", encoding="utf-8"), ensure_ascii=False)
    elif mode == "render":
        render(*sys.argv[2:5])
    elif mode == "chat":
        chat(*sys.argv[2:5])
    else:
        sys.exit(f"unknown mode {mode}")
