// Unicode NFC (data.h's nfc_append): canonical decomposition, canonical ordering by combining
// class, canonical composition (composition exclusions and singletons never compose; Hangul by
// the algorithm), exactly as Hugging Face tokenizers' NFC normalizer computes it: the tables are
// read off tokenizers by scripts/gen_unicode_nfc.py (src/data/unicode_nfc.inc). A run of code
// points that NFC cannot change (ASCII, most of everything) is copied as it is; only a span from
// the last such code point before a change to the next one is decomposed and recomposed.
#include <algorithm>
#include <iterator>

#include "data/bpe.h"

namespace frugal {

namespace {

struct NfcClass { uint32_t first, last; uint8_t cls; };
struct NfcDecomp { uint32_t cp; uint16_t offset; uint8_t len; };
struct NfcPair { uint32_t first, second, composite; };
struct NfcRange { uint32_t first, last; };
#include "data/unicode_nfc.inc"

// Hangul syllables: S = kSBase + (L * kVCount + V) * kTCount + T (T = 0: no trailing consonant).
constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kSCount = kLCount * kVCount * kTCount;

uint8_t combining_class(uint32_t cp) {
  if (cp < kNfcClasses[0].first) return 0;
  auto it = std::upper_bound(std::begin(kNfcClasses), std::end(kNfcClasses), cp,
                             [](uint32_t c, const NfcClass& r) { return c < r.first; });
  return cp <= (it - 1)->last ? (it - 1)->cls : 0;
}

// Whether NFC may change cp or join it to the code point before it.
bool unstable(uint32_t cp) {
  if (cp < kNfcUnstable[0].first) return false;
  auto it = std::upper_bound(std::begin(kNfcUnstable), std::end(kNfcUnstable), cp,
                             [](uint32_t c, const NfcRange& r) { return c < r.first; });
  return cp <= (it - 1)->last;
}

// Appends cp's full canonical decomposition (cp itself if it has none).
void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp - kSBase < kSCount) {
    uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / (kVCount * kTCount));
    out.push_back(kVBase + s % (kVCount * kTCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  auto it = std::lower_bound(std::begin(kNfcDecomps), std::end(kNfcDecomps), cp,
                             [](const NfcDecomp& d, uint32_t c) { return d.cp < c; });
  if (it == std::end(kNfcDecomps) || it->cp != cp) { out.push_back(cp); return; }
  out.insert(out.end(), kNfcDecompChars + it->offset, kNfcDecompChars + it->offset + it->len);
}

// The primary composite of a and b; 0 if there is none.
uint32_t compose(uint32_t a, uint32_t b) {
  if (a - kLBase < kLCount && b - kVBase < kVCount) return kSBase + ((a - kLBase) * kVCount + b - kVBase) * kTCount;
  if (a - kSBase < kSCount && (a - kSBase) % kTCount == 0 && b - kTBase - 1 < kTCount - 1) return a + (b - kTBase);
  auto it = std::lower_bound(std::begin(kNfcPairs), std::end(kNfcPairs), std::pair{a, b},
                             [](const NfcPair& p, std::pair<uint32_t, uint32_t> k) {
                               return p.first != k.first ? p.first < k.first : p.second < k.second;
                             });
  return it != std::end(kNfcPairs) && it->first == a && it->second == b ? it->composite : 0;
}

void append_utf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) { out += char(cp); return; }
  if (cp < 0x800) {
    out += char(0xC0 | cp >> 6);
  } else if (cp < 0x10000) {
    out += char(0xE0 | cp >> 12);
    out += char(0x80 | (cp >> 6 & 0x3F));
  } else {
    out += char(0xF0 | cp >> 18);
    out += char(0x80 | (cp >> 12 & 0x3F));
    out += char(0x80 | (cp >> 6 & 0x3F));
  }
  out += char(0x80 | (cp & 0x3F));
}

// NFC of s[0, n), valid UTF-8, appended to out: decomposed, ordered, composed (UAX #15's
// reference algorithm).
void nfc_span(const unsigned char* s, size_t n, std::string& out) {
  thread_local std::vector<uint32_t> cps;  // the decomposition, then the composition in place
  thread_local std::vector<uint8_t> cls;   // their combining classes
  cps.clear();
  for (size_t i = 0; i < n;) {
    uint32_t cp = 0;  // set by utf8_at (gcc 12 cannot see it: -Wmaybe-uninitialized)
    i += utf8_at(s, i, n, cp);
    decompose(cp, cps);
  }
  cls.resize(cps.size());
  for (size_t i = 0; i < cps.size(); i++) {  // a stable insertion sort of each run of non-starters
    cls[i] = combining_class(cps[i]);
    for (size_t k = i; k > 0 && cls[k] != 0 && cls[k - 1] > cls[k]; k--) {
      std::swap(cps[k], cps[k - 1]);
      std::swap(cls[k], cls[k - 1]);
    }
  }
  if (cps.empty()) return;
  size_t starter = 0, kept = 1;
  int last = cls[0] == 0 ? 0 : 256;  // the class of the last code point kept after the starter
  for (size_t i = 1; i < cps.size(); i++) {
    uint32_t c = compose(cps[starter], cps[i]);
    if (c != 0 && (last == 0 || last < cls[i])) {  // not blocked: joins the starter
      cps[starter] = c;
      continue;
    }
    if (cls[i] == 0) starter = kept;
    last = cls[i];
    cps[kept++] = cps[i];
  }
  for (size_t i = 0; i < kept; i++) append_utf8(cps[i], out);
}

}  // namespace

void nfc_append(std::string_view text, std::string& out) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size(), none = SIZE_MAX;
  size_t copied = 0;  // text[0, copied) is in out
  size_t from = none;  // the last stable code point since then, which what follows may join
  for (size_t i = 0; i < n;) {
    if (s[i] < 0x80) { from = i++; continue; }
    uint32_t cp;
    size_t len = utf8_at(s, i, n, cp);
    if (len == 0) { from = none; i++; continue; }  // not UTF-8: kept, and nothing joins across it
    if (!unstable(cp)) { from = i; i += len; continue; }
    size_t begin = from != none ? from : i, end = i + len;
    while (end < n && (len = utf8_at(s, end, n, cp)) != 0 && unstable(cp)) end += len;
    out.append(text.data() + copied, begin - copied);
    nfc_span(s + begin, end - begin, out);
    copied = i = end;
    from = none;
  }
  out.append(text.data() + copied, n - copied);
}

std::string nfc(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  nfc_append(text, out);
  return out;
}

}  // namespace frugal
