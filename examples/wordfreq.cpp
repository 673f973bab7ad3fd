// wordfreq: the word frequencies of every text file under a directory - spindle's flagship
// example, a real job that combines the patterns the way a real system does.
//
//   wordfreq [options] [DIR]              in-process (DIR defaults to /usr/share/common-licenses)
//   wordfreq --redis URL --role producer [options] [DIR]     the same job over Redis: pushes the
//   wordfreq --redis URL --role worker [options]             paths, workers count, the producer
//                                                            gathers and prints the same result
//   (URL: redis://host:port, or redis+cluster://host:port,host:port for a Redis Cluster)
//
// In one process:
//   rate-limited reader --> pipeline: read -> tokenize -> count --> map-reduce merge --> top N
//   (token_bucket)                 (count: a pool of workers)      (thread_pool)
// Over Redis the same three steps run in each worker process: a worker_pool consumes the file
// paths from a redis::queue (acked once the file's counts are in the results stream), the
// producer gathers the per-file counts from a redis::stream and merges them exactly as in-process.
// Each file is counted once in the result even when a dead worker's files are redelivered (the
// producer keeps the first tally of each path). Workers read the files by path: on several
// machines, share the directory at the same path.
//
// Words are maximal runs of ASCII letters, lowercased, so the result can be checked with
//   tr -cs 'A-Za-z' '\n' | tr 'A-Z' 'a-z' | sort | uniq -c
// Regular files only: symbolic links are not followed, as with find and grep -r. A file that
// cannot be read, or that holds a NUL byte in its first 8 KiB (binary), is reported and skipped.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>  // std::floor
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <spindle/map_reduce.hpp>
#include <spindle/pipeline.hpp>
#include <spindle/rate_limit.hpp>
#include <spindle/redis.hpp>
#include <spindle/thread_pool.hpp>
#include <spindle/worker_pool.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace fs = std::filesystem;
namespace redis = spindle::redis;
using clock_type = std::chrono::steady_clock;

namespace wordfreq {

// ---- the three steps: read, tokenize, count ---------------------------------------------------

struct string_hash {  // lets counts be searched with a string_view (no allocation per word)
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};
using counts = std::unordered_map<std::string, std::uint64_t, string_hash, std::equal_to<>>;

struct document {  // a file on its way through read and tokenize
  std::string path;
  std::string text;  // the bytes; after tokenize(), the words, each ending in '\n'
  std::uint64_t bytes = 0;
  std::string skipped;  // why the file was skipped; empty if it was read
};

struct tally {  // the counts of one file
  std::string path;
  std::uint64_t bytes = 0;
  std::string skipped;
  counts words;
};

/// Reads the whole file; an unreadable or binary file comes back with `skipped` set.
document read(std::string path) {
  document d{std::move(path), {}, 0, {}};
  int fd = ::open(d.path.c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st {};
  if (fd < 0 || ::fstat(fd, &st) != 0) {
    d.skipped = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    return d;
  }
  d.text.resize(static_cast<std::size_t>(st.st_size));
  std::size_t got = 0;
  for (;;) {
    if (got == d.text.size()) d.text.resize(got + 65536);  // the file grew since fstat
    ssize_t n = ::read(fd, d.text.data() + got, d.text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) d.skipped = std::strerror(errno);
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  d.text.resize(got);
  d.bytes = got;
  if (d.skipped.empty() && d.text.find('\0') < 8192) d.skipped = "binary file";
  if (!d.skipped.empty()) d.text.clear();
  return d;
}

/// Lowercases the ASCII letters and turns every run of other bytes into one '\n', in place:
/// the `tr -cs 'A-Za-z' '\n' | tr 'A-Z' 'a-z'` of the text. Never allocates.
document tokenize(document d) {
  char* out = d.text.data();
  bool in_word = false;
  for (char ch : d.text) {  // writes at or behind the byte it reads
    auto lower = static_cast<char>(static_cast<unsigned char>(ch) | 0x20);
    if (lower >= 'a' && lower <= 'z') {
      *out++ = lower;
      in_word = true;
    } else if (in_word) {
      *out++ = '\n';
      in_word = false;
    }
  }
  d.text.resize(static_cast<std::size_t>(out - d.text.data()));
  if (in_word) d.text.push_back('\n');  // the text may end in a letter: no room in place
  return d;
}

/// Counts the words of a tokenized document: the `sort | uniq -c` step.
tally count(document d) {
  tally t{std::move(d.path), d.bytes, std::move(d.skipped), {}};
  std::string_view rest = d.text;
  while (!rest.empty()) {
    auto end = rest.find('\n');  // tokenize() ended every word with one
    auto word = rest.substr(0, end);
    if (auto it = t.words.find(word); it != t.words.end()) {
      ++it->second;
    } else {
      t.words.emplace(word, 1);
    }
    rest.remove_prefix(end + 1);
  }
  return t;
}

/// The associative (and commutative) merge of two partial counts, for map_reduce.
counts merge(counts a, counts b) {
  if (a.size() < b.size()) std::swap(a, b);
  for (auto& [word, n] : b) a.try_emplace(word, 0).first->second += n;
  return a;
}

// ---- the job around them ------------------------------------------------------------------

struct config {
  fs::path dir = "/usr/share/common-licenses";
  std::size_t top = 10;  // 0: every word
  std::size_t threads = std::max(1u, std::thread::hardware_concurrency());
  double rate = 0;                 // files per second; 0: unlimited
  std::string redis_url;           // empty: in-process
  std::string role;                // producer | worker
  std::string job = "wordfreq";    // names the Redis keys
  std::chrono::seconds wait{600};  // the producer's patience for the next result
};

struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The regular files under dir, sorted, as absolute paths. Throws usage_error if dir is no
/// directory; reports and skips the subdirectories it cannot list.
std::vector<std::string> list_files(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw usage_error((fs::exists(dir, ec) ? "not a directory: " : "no such directory: ") +
                      dir.string());
  std::vector<std::string> files;
  fs::recursive_directory_iterator it(fs::absolute(dir), ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    auto st = it->symlink_status(ec);
    if (fs::is_regular_file(st)) {
      files.push_back(it->path().string());
    } else if (fs::is_directory(st) && ::access(it->path().c_str(), R_OK | X_OK) != 0) {
      std::fprintf(stderr, "wordfreq: skipped %s: %s\n", it->path().c_str(), std::strerror(errno));
      it.disable_recursion_pending();
    }
    ec.clear();
  }
  if (ec)
    std::fprintf(stderr, "wordfreq: cannot list all of %s: %s\n", dir.c_str(),
                 ec.message().c_str());
  std::sort(files.begin(), files.end());
  return files;
}

/// A progress line on stderr when it is a terminal, once a run lasts more than a moment:
/// files done / total, MB/s, ETA. Quiet otherwise.
class progress {
 public:
  explicit progress(std::size_t total) : total_(total), tty_(::isatty(STDERR_FILENO) == 1) {}
  void update(std::size_t done, std::uint64_t bytes) {
    auto now = clock_type::now();
    if (!tty_ || now - start_ < std::chrono::milliseconds(300) ||
        now - last_ < std::chrono::milliseconds(100))
      return;
    last_ = now;
    double secs = std::chrono::duration<double>(now - start_).count();
    double eta =
        done == 0 ? 0 : secs * static_cast<double>(total_ - done) / static_cast<double>(done);
    std::fprintf(stderr, "\r\033[K%zu / %zu files  %.1f MB/s  ETA %.0f s", done, total_,
                 static_cast<double>(bytes) / 1e6 / secs, eta);
    shown_ = true;
  }
  /// Clears the line, if one was shown.
  void finish() {
    if (shown_) std::fprintf(stderr, "\r\033[K");
    shown_ = false;
  }
  ~progress() { finish(); }
  double seconds() const {
    return std::chrono::duration<double>(clock_type::now() - start_).count();
  }

 private:
  std::size_t total_;
  bool tty_;
  bool shown_ = false;
  clock_type::time_point start_ = clock_type::now(), last_{};
};

/// Gathers the per-file tallies and merges their counts with map-reduce on a thread pool, a
/// batch at a time: memory holds one batch of per-file counts and the running total.
class merger {
 public:
  explicit merger(std::size_t threads) : pool_(threads) { pending_.reserve(batch); }

  void add(tally t) {
    ++files_;
    bytes_ += t.bytes;
    if (!t.skipped.empty()) skipped_.push_back(t.path + ": " + t.skipped);
    pending_.push_back(std::move(t));
    if (pending_.size() == batch) flush();
  }
  std::size_t files() const noexcept { return files_; }
  std::uint64_t bytes() const noexcept { return bytes_; }

  /// Reports the skipped files, then prints the top words, most frequent first (ties in
  /// alphabetical order) as `uniq -c` does, and a summary on stderr.
  void report(std::size_t top_n, double seconds) {
    flush();
    for (const auto& s : skipped_) std::fprintf(stderr, "wordfreq: skipped %s\n", s.c_str());
    std::vector<std::pair<std::string_view, std::uint64_t>> top(total_.begin(), total_.end());
    std::uint64_t words = 0;
    for (const auto& w : top) words += w.second;
    auto n = top_n == 0 ? top.size() : std::min(top_n, top.size());
    std::partial_sort(top.begin(), top.begin() + static_cast<std::ptrdiff_t>(n), top.end(),
                      [](const auto& a, const auto& b) {
                        return a.second != b.second ? a.second > b.second : a.first < b.first;
                      });
    for (std::size_t i = 0; i < n; ++i)
      std::printf("%7llu %.*s\n", static_cast<unsigned long long>(top[i].second),
                  static_cast<int>(top[i].first.size()), top[i].first.data());
    std::fflush(stdout);  // the result before the summary, where both go to one terminal
    std::fprintf(stderr,
                 "wordfreq: %zu files (%zu skipped), %.2f MB, %llu words, %zu distinct, %.2f s\n",
                 files_, skipped_.size(), static_cast<double>(bytes_) / 1e6,
                 static_cast<unsigned long long>(words), total_.size(), seconds);
  }

 private:
  static constexpr std::size_t batch = 256;

  void flush() {
    total_ = spindle::map_reduce(
        pool_, pending_, [](tally& t) { return std::move(t.words); }, std::move(total_), merge);
    pending_.clear();
  }

  spindle::thread_pool pool_;
  std::vector<tally> pending_;
  counts total_;
  std::vector<std::string> skipped_;
  std::size_t files_ = 0;
  std::uint64_t bytes_ = 0;
};

/// In one process: a rate-limited reader feeding the pipeline read -> tokenize -> count.
int run_local(const config& cfg) {
  auto files = list_files(cfg.dir);
  progress bar(files.size());
  merger totals(cfg.threads);
  // Small queues: each item is a whole file, and a few per worker keep every stage busy.
  auto p = spindle::pipeline<std::string>({.capacity = std::max<std::size_t>(8, 4 * cfg.threads)})
               .stage(read)  // I/O: one reader
               .stage(tokenize, {.workers = cfg.threads})
               .stage(count, {.workers = cfg.threads})  // the heavy stage
               .sink([&](tally t) {                     // one sink thread: no lock
                 totals.add(std::move(t));
                 bar.update(totals.files(), totals.bytes());
               });
  std::optional<spindle::token_bucket<>> bucket;
  if (cfg.rate > 0) bucket.emplace(cfg.rate, 1);
  for (auto& f : files) {
    if (bucket) bucket->acquire();
    if (p.push(std::move(f)) != spindle::status::ok) break;  // a stage failed: wait() says why
  }
  p.close();
  p.wait();
  bar.finish();
  totals.report(cfg.top, bar.seconds());
  return 0;
}

}  // namespace wordfreq

// A tally crosses Redis as "path\0bytes\0skipped\0" followed by "word count\n" lines.
template <>
struct spindle::redis::codec<wordfreq::tally> {
  static std::string encode(const wordfreq::tally& t) {
    std::string s = t.path + '\0' + std::to_string(t.bytes) + '\0' + t.skipped + '\0';
    for (const auto& [word, n] : t.words) (s += word) += ' ' + std::to_string(n) + '\n';
    return s;
  }
  static wordfreq::tally decode(std::string_view s) {
    wordfreq::tally t;
    auto field = [&s]() {
      auto end = s.find('\0');
      if (end == std::string_view::npos) throw redis::error("wordfreq: malformed tally");
      auto f = s.substr(0, end);
      s.remove_prefix(end + 1);
      return f;
    };
    t.path = field();
    t.bytes = codec<std::uint64_t>::decode(field());
    t.skipped = field();
    while (!s.empty()) {
      auto sp = s.find(' '), nl = s.find('\n');
      if (sp == std::string_view::npos || nl == std::string_view::npos || nl < sp)
        throw redis::error("wordfreq: malformed tally");
      t.words.emplace(s.substr(0, sp), codec<std::uint64_t>::decode(s.substr(sp + 1, nl - sp - 1)));
      s.remove_prefix(nl + 1);
    }
    return t;
  }
};

namespace wordfreq {

/// A job's Redis channels, named after --job: the paths to count, and one tally per path.
/// `Where`: redis::options (one server) or redis::cluster (each channel on its slot's primary).
template <class Where>
struct job_channels {
  redis::queue<std::string> paths;
  redis::stream<tally> results;
  job_channels(const std::string& job, Where& o)
      : paths(job + ":files", o), results(job + ":tallies", o, {.group = "producer"}) {}
};

/// Over Redis, the producer: queues every path, then gathers one tally per path.
template <class Where>
int run_producer(const config& cfg, Where& o) {
  auto files = list_files(cfg.dir);
  job_channels<Where> job(cfg.job, o);
  auto& paths = job.paths;
  auto& results = job.results;
  paths.destroy();  // a fresh job: no state left by an earlier run of the same name
  results.destroy();
  paths.push_all(files);  // 64 paths per round trip
  paths.close();  // workers drain the queue, then exit
  std::fprintf(stderr, "wordfreq: %zu files queued as job '%s'\n", files.size(), cfg.job.c_str());

  progress bar(files.size());
  std::unordered_set<std::string> pending(files.begin(), files.end());
  merger totals(cfg.threads);
  auto last = clock_type::now();
  while (!pending.empty()) {
    tally t;  // each pop acks the previous tally in the same round trip
    if (results.pop_for(t, std::chrono::seconds(1)) != spindle::status::ok) {
      if (clock_type::now() - last > cfg.wait)
        throw std::runtime_error("no result for " + std::to_string(cfg.wait.count()) + " s with " +
                                 std::to_string(pending.size()) +
                                 " files left: are workers running (--role worker)?");
      continue;
    }
    last = clock_type::now();
    if (pending.erase(t.path) == 1) {  // a redelivered file's second tally is dropped
      totals.add(std::move(t));
      bar.update(totals.files(), totals.bytes());
    }
  }
  results.ack_last();
  results.destroy();
  bar.finish();
  totals.report(cfg.top, bar.seconds());
  return 0;
}

/// Over Redis, a worker: read -> tokenize -> count each queued path, with a worker_pool.
template <class Where>
int run_worker(const config& cfg, Where& o) {
  job_channels<Where> job(cfg.job, o);
  auto& paths = job.paths;
  auto& results = job.results;
  std::optional<redis::token_bucket> bucket;  // one rate shared by every worker
  if (cfg.rate > 0) bucket.emplace(cfg.job + ":rate", o, cfg.rate, 1);
  spindle::worker_pool pool(
      paths, cfg.threads,
      [&](std::string path) {
        if (bucket) bucket->acquire();
        results.push(count(tokenize(read(std::move(path)))));  // then the path is acked
      },
      {.on_error = [](std::exception_ptr e) {
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& x) {
          std::fprintf(stderr, "wordfreq worker: %s (the file will be retried)\n", x.what());
        }
      }});
  pool.join();  // the producer closed the queue and it is drained
  auto st = pool.stats();
  std::fprintf(stderr, "wordfreq worker: %llu files counted%s\n",
               static_cast<unsigned long long>(st.processed),
               st.processed == 0 ? " (the queue was closed: start the producer first)" : "");
  return 0;
}

const char* const usage =
    "usage: wordfreq [--top N] [--threads N] [--rate FILES_PER_S] [DIR]\n"
    "       wordfreq --redis URL --role producer [--job NAME] [--wait S] [--top N] [DIR]\n"
    "       wordfreq --redis URL --role worker [--job NAME] [--threads N] [--rate FILES_PER_S]\n"
    "Word frequencies of every text file under DIR (default /usr/share/common-licenses).\n"
    "URL: redis://HOST:PORT, or redis+cluster://HOST:PORT,HOST:PORT,... for a Redis Cluster.\n";

template <class T>
T number(const std::string& flag, const std::string& text) {
  try {
    std::size_t used = 0;
    double v = std::stod(text, &used);
    if (used == text.size() && v >= 0 && (std::is_floating_point_v<T> || v == std::floor(v)))
      return static_cast<T>(v);
  } catch (const std::exception&) {
  }
  throw usage_error(flag + " needs a non-negative " +
                    (std::is_floating_point_v<T> ? "number" : "integer") + ", got '" + text + "'");
}

config parse(int argc, char** argv) {
  config cfg;
  bool have_dir = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw usage_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      std::exit(0);
    } else if (a == "--top") {
      cfg.top = number<std::size_t>(a, value());
    } else if (a == "--threads") {
      cfg.threads = number<std::size_t>(a, value());
      if (cfg.threads == 0) throw usage_error("--threads must be at least 1");
    } else if (a == "--rate") {
      cfg.rate = number<double>(a, value());
    } else if (a == "--redis") {
      cfg.redis_url = value();
    } else if (a == "--role") {
      cfg.role = value();
    } else if (a == "--job") {
      cfg.job = value();
    } else if (a == "--wait") {
      cfg.wait = std::chrono::seconds(number<long>(a, value()));
    } else if (a.starts_with("-") || have_dir) {
      throw usage_error("unexpected argument '" + a + "'");
    } else {
      cfg.dir = a;
      have_dir = true;
    }
  }
  if (!cfg.redis_url.empty() && cfg.role != "producer" && cfg.role != "worker")
    throw usage_error("--redis needs --role producer or --role worker");
  if (cfg.redis_url.empty() && !cfg.role.empty()) throw usage_error("--role needs --redis URL");
  return cfg;
}

}  // namespace wordfreq

int main(int argc, char** argv) {
  try {
    auto cfg = wordfreq::parse(argc, argv);
    if (cfg.redis_url.empty()) return wordfreq::run_local(cfg);
    auto run = [&](auto& where) {
      return cfg.role == "producer" ? wordfreq::run_producer(cfg, where)
                                    : wordfreq::run_worker(cfg, where);
    };
    if (cfg.redis_url.starts_with("redis+cluster://")) {  // every structure on its slot's primary
      redis::cluster c(cfg.redis_url);
      return run(c);
    }
    auto o = redis::options::from_url(cfg.redis_url);
    return run(o);
  } catch (const wordfreq::usage_error& e) {
    std::fprintf(stderr, "wordfreq: %s\n%s", e.what(), wordfreq::usage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "wordfreq: %s\n", e.what());
    return 1;
  }
}
