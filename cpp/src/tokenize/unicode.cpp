#include "tokenize/unicode.h"

#include <algorithm>

namespace headkv::unicode {

namespace {
struct AsciiTable {
  uint8_t f[128];
  AsciiTable() {
    for (uint32_t c = 0; c < 128; ++c) {
      f[c] = 0;
      for (size_t i = 0; i < kNumRanges && kRanges[i].first <= c; ++i)
        if (c <= kRanges[i].last) f[c] = kRanges[i].flags;
    }
  }
};
}  // namespace

uint8_t flags(uint32_t cp) {
  static const AsciiTable ascii;
  if (cp < 128) return ascii.f[cp];
  const CpRange* end = kRanges + kNumRanges;
  const CpRange* it =
      std::upper_bound(kRanges, end, cp, [](uint32_t c, const CpRange& r) { return c < r.first; });
  if (it == kRanges) return 0;
  --it;
  return cp <= it->last ? it->flags : 0;
}

uint32_t decode_utf8(std::string_view s, size_t i, size_t* len) {
  const unsigned char c = (unsigned char)s[i];
  *len = 1;
  if (c < 0x80) return c;
  int n;
  uint32_t cp;
  if ((c & 0xE0) == 0xC0) n = 1, cp = c & 0x1F;
  else if ((c & 0xF0) == 0xE0) n = 2, cp = c & 0x0F;
  else if ((c & 0xF8) == 0xF0) n = 3, cp = c & 0x07;
  else return kInvalid;
  if (i + n >= s.size()) return kInvalid;
  for (int k = 1; k <= n; ++k) {
    const unsigned char d = (unsigned char)s[i + k];
    if ((d & 0xC0) != 0x80) return kInvalid;
    cp = (cp << 6) | (d & 0x3F);
  }
  static const uint32_t kMin[4] = {0, 0x80, 0x800, 0x10000};
  if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return kInvalid;
  *len = n + 1;
  return cp;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += (char)cp;
  } else if (cp < 0x800) {
    out += (char)(0xC0 | (cp >> 6));
    out += (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += (char)(0xE0 | (cp >> 12));
    out += (char)(0x80 | ((cp >> 6) & 0x3F));
    out += (char)(0x80 | (cp & 0x3F));
  } else {
    out += (char)(0xF0 | (cp >> 18));
    out += (char)(0x80 | ((cp >> 12) & 0x3F));
    out += (char)(0x80 | ((cp >> 6) & 0x3F));
    out += (char)(0x80 | (cp & 0x3F));
  }
}

void decode_all(std::string_view s, Decoded& out) {
  out.cps.clear();
  out.cls.clear();
  out.offs.clear();
  out.cps.reserve(s.size());
  out.cls.reserve(s.size());
  out.offs.reserve(s.size() + 1);
  size_t i = 0;
  while (i < s.size()) {
    size_t len;
    const uint32_t cp = decode_utf8(s, i, &len);
    out.cps.push_back(cp);
    out.cls.push_back(cp == kInvalid ? 0 : flags(cp));
    out.offs.push_back((uint32_t)i);
    i += len;
  }
  out.offs.push_back((uint32_t)s.size());
}

}  // namespace headkv::unicode
