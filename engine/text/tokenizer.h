// Caption tokenizer: the text front end of SCAN, reproducing what the original training code fed
// its vocabulary, i.e. NLTK 3.8's NLTKWordTokenizer (the improved Treebank tokenizer behind
// nltk.word_tokenize) applied to the lower-cased caption. Punkt sentence splitting, which
// word_tokenize runs first, is deliberately not reproduced: a caption is one sentence.
//
// Input is UTF-8. Invalid bytes never fail: each one is treated like Python's "surrogateescape"
// code point for that byte (neither letter, digit nor space) and comes back unchanged in its token.
//
// Unicode fidelity (against Python 3.11 / Unicode 14, what Debian's python3-nltk runs on):
// - Lower-casing follows str.lower() for Latin (U+0000-U+024F, U+1E00-U+1EFF, incl. U+0130 -> "i"
//   + U+0307), Greek (final sigma included, its context approximated), Cyrillic, Armenian, the
//   letter-like symbols (Kelvin sign...), circled and full-width Latin letters; others keep their
//   case (e.g. Georgian, Coptic, Glagolitic, Cherokee, Deseret, Greek Extended).
// - The regex classes \s and \d are exact; \w is exact below U+0800, in U+1E00-U+30FF and
//   U+FE00-U+FFFF and from U+1F000 on, and elsewhere (other scripts, CJK, Hangul) approximated
//   as "letter".
//   \w only matters next to apostrophes and the contraction words.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace scanserve {

// SCAN's caption tokenisation: lower-case, then NltkWordTokenize. Empty or all-space input gives
// no tokens.
std::vector<std::string> TokenizeCaption(std::string_view caption);

// NLTKWordTokenizer().tokenize(text) without lower-casing first (convert_parentheses=False).
std::vector<std::string> NltkWordTokenize(std::string_view text);

}  // namespace scanserve
