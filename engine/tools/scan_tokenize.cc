// scan_tokenize: tokenises captions read one per line from stdin, the way SCAN does.
//
//   scan_tokenize [--vocab FILE] [--keep-case] < captions.txt
//
// Prints, for every input line, its tokens joined by TAB characters (an empty line for a caption
// without tokens). With --vocab, prints the ids instead: <start> ids... <end>. --keep-case skips
// lower-casing (NLTKWordTokenizer on the line as it is; not combinable with --vocab).
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/common/command_line.h"
#include "engine/text/tokenizer.h"
#include "engine/text/vocabulary.h"

namespace {

constexpr const char* kUsage =
    "usage: scan_tokenize [--vocab FILE] [--keep-case] < captions (one per line)\n"
    "Prints each line's tokens (or, with --vocab, its ids incl. <start>/<end>), TAB-separated.\n";

struct Options {
  std::string vocab_path;
  bool keep_case = false;
  bool help = false;
};

absl::StatusOr<Options> ParseArgs(int argc, char** argv) {
  scanserve::CommandLineSpec spec;
  spec.value_flags = {"--vocab"};
  spec.switches = {"--keep-case", "--help", "-h"};
  absl::StatusOr<std::vector<scanserve::CommandLineFlag>> flags = scanserve::ParseCommandLine(argc, argv, spec);
  if (!flags.ok()) return flags.status();
  Options options;
  for (const scanserve::CommandLineFlag& flag : *flags) {
    if (flag.name == "--vocab") {
      options.vocab_path = flag.value;
    } else if (flag.name == "--keep-case") {
      options.keep_case = true;
    } else {
      options.help = true;
    }
  }
  if (options.keep_case && !options.vocab_path.empty()) {
    return absl::InvalidArgumentError("--keep-case and --vocab do not combine (ids are of lower-cased tokens)");
  }
  return options;
}

template <typename T>
void PrintTabJoined(const std::vector<T>& items, std::string* out) {
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out->push_back('\t');
    if constexpr (std::is_same_v<T, std::string>) {
      out->append(items[i]);
    } else {
      out->append(std::to_string(items[i]));
    }
  }
  out->push_back('\n');
}

}  // namespace

int main(int argc, char** argv) {
  const absl::StatusOr<Options> options = ParseArgs(argc, argv);
  if (!options.ok()) {
    std::fprintf(stderr, "scan_tokenize: %s\n%s", std::string(options.status().message()).c_str(), kUsage);
    return 2;
  }
  if (options->help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  std::optional<scanserve::Vocabulary> vocabulary;
  if (!options->vocab_path.empty()) {
    absl::StatusOr<scanserve::Vocabulary> loaded =
        scanserve::Vocabulary::FromFile(options->vocab_path);
    if (!loaded.ok()) {
      std::fprintf(stderr, "scan_tokenize: %s\n", loaded.status().ToString().c_str());
      return 1;
    }
    vocabulary = std::move(loaded).value();
  }

  std::ios::sync_with_stdio(false);
  std::string line;
  std::string out;
  while (std::getline(std::cin, line)) {
    if (vocabulary.has_value()) {
      PrintTabJoined(vocabulary->EncodeCaption(line), &out);
    } else if (options->keep_case) {
      PrintTabJoined(scanserve::NltkWordTokenize(line), &out);
    } else {
      PrintTabJoined(scanserve::TokenizeCaption(line), &out);
    }
    if (out.size() >= (1 << 16)) {
      std::cout.write(out.data(), static_cast<std::streamsize>(out.size()));
      out.clear();
    }
  }
  std::cout.write(out.data(), static_cast<std::streamsize>(out.size()));
  std::cout.flush();
  return std::cout.good() ? 0 : 1;
}
