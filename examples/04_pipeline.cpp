// Pipeline: four stages (collect, clean, process, save) joined by bounded queues. "clean" drops
// blank records (a stage returning std::optional filters), "process" runs on three workers yet
// stays in input order (ordered = true), and "save" is the sink. Prints what was saved.
#include <spindle/pipeline.hpp>

#include <cctype>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

int main() {
  const std::vector<std::string> raw{"  apple ", "", "Banana", "   ", "cherry  ", "date", "elderberry"};
  std::vector<std::string> saved;

  auto p = spindle::pipeline<std::string>({.capacity = 16})
               // collect: turn each raw record into a working copy (here: as is)
               .stage([](std::string s) { return s; })
               // clean: trim, lower-case, drop blanks
               .stage([](std::string s) -> std::optional<std::string> {
                 auto b = s.find_first_not_of(' ');
                 if (b == std::string::npos) return std::nullopt;
                 s = s.substr(b, s.find_last_not_of(' ') - b + 1);
                 for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
                 return s;
               })
               // process: an expensive step, on three workers, in order
               .stage([](std::string s) { return s + " (" + std::to_string(s.size()) + ")"; },
                      {.workers = 3, .ordered = true})
               // save: the sink, one worker
               .sink([&](std::string s) { saved.push_back(std::move(s)); })
               .run(raw);  // feeds every record, then ends the stream
  p.wait();  // rethrows the first stage exception, if any

  for (const auto& s : saved) std::printf("saved %s\n", s.c_str());
  std::printf("%zu of %zu records saved\n", saved.size(), raw.size());
  return saved.size() == 5 ? 0 : 1;
}
