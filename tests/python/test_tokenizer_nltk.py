#!/usr/bin/python3
"""Parity of scanserve's C++ caption tokenizer (engine/tools/scan_tokenize) with NLTK.

Every caption's tokens must equal NLTKWordTokenizer().tokenize(caption.lower()) (NLTK 3.8, Debian's
python3-nltk), for a list of tricky captions, all 5,000 Flickr30K test captions, seeded random
strings, sweeps over the Unicode ranges the C++ side claims to treat exactly, and invalid UTF-8
(compared through Python's surrogateescape). `--vocab` ids are checked against SCAN's lookup
(data.py: <start>, vocab(token) with <unk> for unknown words, <end>).

Environment: SCANSERVE_BUILD_DIR (holds engine/scan_tokenize), SCANSERVE_SOURCE_DIR (the
repository; the shared data is ../shared/data/scan-text beside it). Exit 77 = skipped.
"""
import json
import os
import random
import subprocess
import sys

SKIP = 77


def skip(reason):
    print(f"SKIP: {reason}")
    sys.exit(SKIP)


try:
    from nltk.tokenize import NLTKWordTokenizer
except ImportError as e:  # pragma: no cover - depends on the machine
    skip(f"nltk is not importable under {sys.executable}: {e}")

SOURCE_DIR = os.environ.get("SCANSERVE_SOURCE_DIR", os.getcwd())
BUILD_DIR = os.environ.get("SCANSERVE_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))
TEXT_DATA_DIR = os.path.join(SOURCE_DIR, "..", "shared", "data", "scan-text")
BINARY = os.path.join(BUILD_DIR, "engine", "scan_tokenize")

NLTK = NLTKWordTokenizer()

# Captions exercising every rule of the tokenizer; expectations come from NLTK itself.
TRICKY_CAPTIONS = [
    "A man's hat.", "They don't know.", "I can't go", "I cannot go", "CANNOT", "Don't",
    "We'll see; they're here, you've won, I'm sure, he'd go",
    "gonna gimme gotta lemme wanna go", "wanna", "wannabe", "d'ye know more'n me",
    "'Tis the season, 'twas fun", "isn't it", "it's Joe's", "the dogs' bones", "Dogs' toys.",
    "rock 'n' roll", "o'clock y'all ma'am 'em", "a'b", "8'x10'", "a 6' tall man", "'s", "'", "''",
    "A well-dressed man in a black-and-white shirt.", "a -- b---c", "x\u2014y", "x--y",
    "It costs $5.", "He is 3.5 feet tall, weighs 1,000 pounds.", "It's 10:30 now: go",
    "1,5 or 1, 5", "3:45, 3 :45", "@home #tag 50% A&B", "5*3=15", "#1",
    "Mr. Smith went to Washington D.C.", "U.S.A. flag", "a.b.c.", "The end .", "The end.)",
    "(yes.)", "end. \")  ", "The end.\" ", "Wait... what?!", "Wait..", "Hi . . .", "...", ".",
    "Hello!!! Really??", "a,b, c ,d", "end with comma,", "end with colon:", "smile :)",
    "(a) [b] {c} <d>", "\"Hello,\" she said.", "He said 'hi' to me.", "''Quoted''",
    "``Quoted''", "\"", "\u201cCurly\u201d \u2018quotes\u2019 \u00abguillemets\u00bb \u201elow\u201c",
    "Two  dogs\trun\rfast", "", "   \t ", "\u00a0a\u00a0b\u3000", "end.  \t",
    "caf\u00e9 CR\u00c8ME \u015ctra\u00dfe \u00c0\u00c9\u00ce", "\u0130stanbul", "\u017ftill",
    "g\u0131mme", "\u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3", "\u03a3\u0391\u03a3 \u03a3.",
    "A man in a red shirt is climbing a rock .", "Two young , White males are outside near many bushes .",
]

# Pieces for random strings: rule triggers, contraction fragments, quotes, odd whitespace, non-ASCII.
FUZZ_PIECES = [
    "a", "b", "s", "t", "n", "d", "m", "e", "i", "l", "r", "v", "o", "w", "y", "'", "\"", "`", "``",
    "''", ".", "..", "...", ",", ":", ";", "?", "!", "(", ")", "[", "]", "{", "}", "<", ">", "-", "--",
    "*", "$", "%", "&", "@", "#", " ", "  ", "\t", "1", "2", "0", "3.5", "1,000", "can", "not",
    "cannot", "gon", "na", "wanna", "wan", "gimme", "lemme", "gotta", "d'ye", "more'n", "'tis",
    "'twas", " 'tis", "n't", "'s", "'ll", "'re", "'ve", "'m", "'d", "N'T", "'S", "'LL", "'RE", "'Ve",
    "CANNOT", "\u00ab", "\u00bb", "\u201c", "\u201d", "\u2018", "\u2019", "\u201e", "\u00e9", "\u00c9",
    "\u0131", "\u017f", "\u0130", "\u00a0", "\u2028", "x", "_", "\u0663", "\x85", "\u3000", "\x0b",
    "\x0c", "\r", "\x1c", "\u0301", "\u00df", "\u1e9e", "\u0178", "\u212a", "\u00b2", "\u00b5",
    "\u200b", "\U0001f600", "\u4e2d", "\ud55c", "\u3001", "\u3002", "\uff02", "\uff01", "\uff11",
]
INVALID_UTF8 = [b"\xff", b"\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"]

# Regions where the C++ side's \w, \d and \s are exact (tokenizer.h), and where it lower-cases.
EXACT_CLASS_RANGES = [(0x80, 0x800), (0x1E00, 0x3100), (0xFE00, 0x10000), (0x1F000, 0x20000)]
EXACT_CLASS_SAMPLED = range(0x20000, 0x110000, 61)  # planes 2-16: a sample keeps the test quick
LOWER_CASE_RANGES = [(0x00, 0x590), (0x1E00, 0x1F00), (0x2100, 0x2150), (0x24B6, 0x24EA),
                     (0xFF00, 0xFF60)]


def decode(line):
    return line.decode("utf-8", "surrogateescape")


def expected_tokens(line, lower=True):
    text = decode(line)
    return [t.encode("utf-8", "surrogateescape") for t in NLTK.tokenize(text.lower() if lower else text)]


def run_binary(lines, *args):
    """Feeds byte lines to scan_tokenize; returns one list of byte fields per line."""
    for line in lines:
        assert b"\n" not in line, line
    result = subprocess.run([BINARY, *args], input=b"".join(l + b"\n" for l in lines),
                            capture_output=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{BINARY} {' '.join(args)} exited {result.returncode}: "
                           f"{result.stderr.decode(errors='replace')}")
    out = result.stdout.split(b"\n")
    if out[-1] != b"" or len(out) - 1 != len(lines):
        raise RuntimeError(f"{BINARY}: {len(out) - 1} output lines for {len(lines)} captions")
    return [o.split(b"\t") if o else [] for o in out[:-1]]


class Checks:
    def __init__(self):
        self.failures = 0

    def compare(self, name, lines, *, lower=True):
        got = run_binary(lines, *([] if lower else ["--keep-case"]))
        bad = []
        for line, tokens in zip(lines, got):
            want = expected_tokens(line, lower)
            if want != tokens:
                bad.append((line, want, tokens))
        self.report(name, len(lines), bad)

    def report(self, name, total, bad):
        status = "ok" if not bad else "FAILED"
        print(f"{status}: {name}: {total - len(bad)}/{total} match")
        for line, want, got in bad[:5]:
            print(f"    caption  {decode(line)!r}\n    nltk     {want}\n    scanserve {got}")
        if bad:
            self.failures += 1


def fuzz_lines(seed, count):
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(0, 12)):
            if rng.random() < 0.03:
                parts.append(rng.choice(INVALID_UTF8))
            else:
                parts.append(rng.choice(FUZZ_PIECES).encode("utf-8"))
        lines.append(b"".join(parts))
    return lines


def code_points(ranges, extra=()):
    for c in [c for lo, hi in ranges for c in range(lo, hi)] + list(extra):
        if c != 0x0A and not 0xD800 <= c < 0xE000:
            yield chr(c)


def scan_lookup(word2idx, tokens):
    """SCAN's data.py: [vocab('<start>')] + [vocab(t) for t in tokens] + [vocab('<end>')]."""
    unk = word2idx["<unk>"]
    return [word2idx["<start>"]] + [word2idx.get(t, unk) for t in tokens] + [word2idx["<end>"]]


def main():
    captions_path = os.path.join(TEXT_DATA_DIR, "f30k_test_caps.txt")
    vocab_path = os.path.join(TEXT_DATA_DIR, "f30k_precomp_vocab.json")
    if not os.path.exists(captions_path) or not os.path.exists(vocab_path):
        skip(f"shared SCAN text data absent ({TEXT_DATA_DIR})")
    if not os.access(BINARY, os.X_OK):
        print(f"FAILED: {BINARY} not found; build the scan_tokenize target "
              f"(SCANSERVE_BUILD_DIR={BUILD_DIR})")
        return 1

    checks = Checks()
    checks.compare("tricky captions", [c.encode("utf-8") for c in TRICKY_CAPTIONS])
    checks.compare("tricky captions, case kept", [c.encode("utf-8") for c in TRICKY_CAPTIONS],
                   lower=False)

    with open(captions_path, "rb") as f:
        captions = f.read().split(b"\n")
    if captions and captions[-1] == b"":
        captions.pop()
    assert len(captions) == 5000, len(captions)
    checks.compare("Flickr30K test captions", captions)

    fuzz = fuzz_lines(seed=20180308, count=20000)
    checks.compare("random strings", fuzz)
    checks.compare("random strings, case kept", fuzz, lower=False)

    # \w, \d, \s: each code point where it decides a rule (after an apostrophe, after a comma,
    # around a contraction, before a final period); case kept so that only the classes matter.
    sweep = [t.encode("utf-8", "surrogateescape")
             for ch in code_points(EXACT_CLASS_RANGES, EXACT_CLASS_SAMPLED)
             for t in ("'" + ch, "'" + ch + "x", "x," + ch, "cannot" + ch, ch + "cannot", "a" + ch + ".")]
    checks.compare("character classes (exact ranges)", sweep, lower=False)

    # Lower-casing, between cased letters so that Greek final sigma is decided by them.
    lowered = [t.encode("utf-8") for ch in code_points(LOWER_CASE_RANGES) for t in (ch, "X" + ch + "Y")]
    checks.compare("lower-casing (covered ranges)", lowered)

    with open(vocab_path, encoding="utf-8") as f:
        word2idx = json.load(f)["word2idx"]
    sample = [c.encode("utf-8") for c in TRICKY_CAPTIONS] + captions
    got_ids = run_binary(sample, "--vocab", vocab_path)
    bad = []
    for line, got in zip(sample, got_ids):
        want = scan_lookup(word2idx, NLTK.tokenize(decode(line).lower()))
        if [int(g) for g in got] != want:
            bad.append((line, want, got))
    checks.report("--vocab ids (f30k vocabulary)", len(sample), bad)
    tricky = [c.encode("utf-8") for c in TRICKY_CAPTIONS]
    same = run_binary(tricky, "--vocab=" + vocab_path) == got_ids[:len(tricky)]
    checks.report("--vocab=FILE spelling", 1, [] if same else [(b"", "same ids", "different ids")])

    # Bad command lines: exit 2, the mistake named on stderr, nothing on stdout.
    bad = []
    for args, message in [(["--keep-case", "--vocab", vocab_path], "do not combine"),
                          (["--vocab"], "--vocab needs a value"),
                          (["--lower"], "unknown argument '--lower'"),
                          (["--keep-case=1"], "--keep-case takes no value")]:
        r = subprocess.run([BINARY, *args], input=b"a dog\n", capture_output=True, timeout=60)
        if r.returncode != 2 or message.encode() not in r.stderr or r.stdout:
            bad.append((" ".join(args).encode(), f"exit 2, {message!r}", f"exit {r.returncode}, {r.stderr!r}"))
    checks.report("bad command lines", 4, bad)

    if checks.failures:
        print(f"FAILED: {checks.failures} check(s)")
        return 1
    print("PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
