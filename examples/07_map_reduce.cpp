// Map-reduce: word count over several documents. Each document is mapped to its own word
// counts on the pool; the partial counts are merged (an associative reduce) in a fixed order,
// so the result is the same on every run. Prints the most frequent words.
#include <spindle/map_reduce.hpp>
#include <spindle/thread_pool.hpp>

#include <algorithm>
#include <cstdio>
#include <map>
#include <sstream>
#include <string>
#include <vector>

using counts = std::map<std::string, int>;

int main() {
  const std::vector<std::string> documents{
      "the quick brown fox jumps over the lazy dog",
      "the dog barks and the fox runs",
      "a quick brown dog naps in the sun",
      "the sun sets and the fox sleeps",
  };
  spindle::thread_pool pool(2);

  auto map = [](const std::string& doc) {
    counts c;
    std::istringstream in(doc);
    for (std::string w; in >> w;) ++c[w];
    return c;
  };
  auto reduce = [](counts a, const counts& b) {
    for (const auto& [w, n] : b) a[w] += n;
    return a;
  };
  counts total = spindle::map_reduce(pool, documents, map, counts{}, reduce);

  std::vector<std::pair<std::string, int>> top(total.begin(), total.end());
  std::stable_sort(top.begin(), top.end(), [](auto& a, auto& b) { return a.second > b.second; });
  for (std::size_t i = 0; i < 4; ++i) std::printf("%-6s %d\n", top[i].first.c_str(), top[i].second);
  std::printf("%zu distinct words\n", total.size());
  return total["the"] == 7 ? 0 : 1;
}
