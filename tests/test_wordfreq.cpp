// Tests of the flagship example, examples/wordfreq.cpp, run as a program: its counts against
// the coreutils pipeline `tr -cs 'A-Za-z' '\n' | tr 'A-Z' 'a-z' | sort | uniq -c` over a
// generated tree (unreadable, binary and special files in it) and over /usr/share/common-licenses,
// in-process and over Redis with a producer and two worker processes; bad input, --top, --rate
// and the progress line on a terminal.
#include <doctest/doctest.h>
#include <stdlib.h>  // posix_openpt, grantpt, unlockpt, ptsname
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <spindle/redis/cluster.hpp>
#include <spindle/redis/connection.hpp>
#include <spindle/redis/stream.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/process.hpp"
#include "support/redis_cluster.hpp"
#include "support/redis_server.hpp"

#ifndef SPINDLE_WORDFREQ
#error "SPINDLE_WORDFREQ (the path of the wordfreq example) must be defined by the build"
#endif

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test_support::run;
using test_support::run_result;
using word_counts = std::map<std::string, unsigned long long>;

namespace {

const std::string wordfreq = SPINDLE_WORDFREQ;

// A temporary directory, removed with everything in it.
struct temp_dir {
  fs::path path;
  temp_dir() {
    char tmpl[] = "/tmp/spindle-wordfreq-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~temp_dir() {
    run({"/bin/chmod", "-R", "u+rwx", path.string()}, 10s);  // unlock what a test locked
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

void write(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << bytes;
}

// A tree of text files with mixed case, digits, punctuation and UTF-8, nested directories, an
// empty file, a file without a final newline and a large file; plus what must be skipped or
// ignored: a binary file, an unreadable file, an unreadable directory, a FIFO, a symbolic link.
// Deterministic.
void make_tree(const fs::path& root) {
  std::mt19937 rng(12345);
  std::vector<std::string> vocab;
  const std::string letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
  for (int i = 0; i < 400; ++i) {
    std::string w;
    for (std::size_t k = 0, n = 1 + rng() % 9; k < n; ++k) w += letters[rng() % letters.size()];
    vocab.push_back(w);
  }
  const std::vector<std::string> gaps = {" ",   "\n",  ", ", "--",  "42", "\t", "caf\xc3\xa9 ",
                                         "'s ", "...", "_",  "\r\n"};
  auto text = [&](std::size_t words) {
    std::string s;
    for (std::size_t i = 0; i < words; ++i) {
      s += vocab[std::min(rng() % vocab.size(), rng() % vocab.size())];  // skewed: ties and runs
      s += gaps[rng() % gaps.size()];
    }
    return s;
  };
  const char* dirs[] = {"", "a/", "a/b/", "a/b/c/", "d/"};
  for (int i = 0; i < 24; ++i)
    write(root / (std::string(dirs[i % 5]) + "f" + std::to_string(i) + ".txt"),
          text(50 + rng() % 2000));
  write(root / "big.txt", text(300000));
  write(root / "empty.txt", "");
  write(root / "a/no-newline.txt", "Zebra zebra ZEBRA");
  write(root / "d/binary.bin", std::string("ELF\0\1\2 binary words here", 26));
  write(root / "a/unreadable.txt", "secret words never counted\n");
  ::chmod((root / "a/unreadable.txt").c_str(), 0);
  write(root / "a/locked/hidden.txt", "hidden words never counted\n");
  ::chmod((root / "a/locked").c_str(), 0);
  REQUIRE(::mkfifo((root / "a/b/fifo").c_str(), 0600) == 0);  // would block a reader forever
  fs::create_symlink(root / "f0.txt", root / "d/link.txt");   // not followed
}

// The command that runs wordfreq so that it cannot read a mode-000 file: as root, without the
// capabilities that bypass file permissions.
std::vector<std::string> wordfreq_cmd(std::vector<std::string> args) {
  std::vector<std::string> cmd;
  if (::geteuid() == 0)
    cmd = {"/usr/bin/setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"};
  cmd.push_back(wordfreq);
  cmd.insert(cmd.end(), args.begin(), args.end());
  return cmd;
}

// Reads "count word" lines (the output of uniq -c and of wordfreq); empty words are ignored.
word_counts parse_counts(const std::string& text) {
  word_counts m;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    unsigned long long n = 0;
    std::string w;
    if (ls >> n >> w) m[w] += n;
  }
  return m;
}

// The coreutils answer for the regular files under dir that `find_filter` selects (each file
// tokenized on its own, so that words never join across files).
word_counts coreutils_counts(const fs::path& dir, const std::string& find_filter = "") {
  std::string script = "export LC_ALL=C; find '" + dir.string() + "' -type f " + find_filter +
                       " -exec sh -c 'for f; do tr -cs A-Za-z \"\\n\" < \"$f\"; echo; done' sh {} +"
                       " | tr A-Z a-z | sort | uniq -c";
  auto r = run({"/bin/sh", "-c", script});
  REQUIRE(r.exited(0));
  return parse_counts(r.out);
}

const std::string skip_filter = "! -name binary.bin ! -name unreadable.txt ! -path '*/locked/*'";

}  // namespace

TEST_CASE("wordfreq counts a tree's text files as the coreutils pipeline does, skipping the rest") {
  temp_dir t;
  make_tree(t.path);
  auto r = run(wordfreq_cmd({"--top", "0", "--threads", "3", t.path.string()}));
  INFO(r.err);
  REQUIRE(r.exited(0));
  auto expected = coreutils_counts(t.path, skip_filter);
  REQUIRE(expected.size() > 300);
  CHECK(parse_counts(r.out) == expected);
  CHECK(expected.count("zebra") == 1);  // a file without a final newline still ends its word
  // the unreadable and the binary file are reported and skipped; nothing else is
  CHECK(r.err.find("skipped " + (t.path / "a/unreadable.txt").string() + ": Permission denied") !=
        std::string::npos);
  CHECK(r.err.find("skipped " + (t.path / "d/binary.bin").string() + ": binary file") !=
        std::string::npos);
  CHECK(r.err.find("skipped " + (t.path / "a/locked").string() + ": Permission denied") !=
        std::string::npos);
  CHECK(r.err.find("29 files (2 skipped)") != std::string::npos);  // the 2 above among them
  CHECK(r.err.find('\r') == std::string::npos);  // no progress line: stderr is no terminal
}

TEST_CASE("wordfreq counts /usr/share/common-licenses, the README's main job, as coreutils does") {
  const fs::path dir = "/usr/share/common-licenses";
  REQUIRE(fs::is_directory(dir));  // Debian's base-files
  auto r = run({wordfreq, "--top", "0", dir.string()});
  INFO(r.err);
  REQUIRE(r.exited(0));
  CHECK(parse_counts(r.out) == coreutils_counts(dir));
  auto by_default = run({wordfreq});  // the directory is the default; top 10
  REQUIRE(by_default.exited(0));
  std::size_t end = 0;
  for (int line = 0; line < 10; ++line) end = r.out.find('\n', end) + 1;
  CHECK(by_default.out == r.out.substr(0, end));
}

TEST_CASE("wordfreq --top N prints the N most frequent words, ties in alphabetical order") {
  temp_dir t;
  write(t.path / "x.txt", "b a B c A d e e E e");
  write(t.path / "y.txt", "c");
  auto r = run({wordfreq, "--top", "3", t.path.string()});
  REQUIRE(r.exited(0));
  CHECK(r.out == "      4 e\n      2 a\n      2 b\n");  // c also has 2: alphabetically after b
}

TEST_CASE("wordfreq reports bad input with a clear message and exit code 2") {
  temp_dir t;
  auto missing = run({wordfreq, (t.path / "nope").string()});
  CHECK(missing.exited(2));
  CHECK(missing.err.find("no such directory: " + (t.path / "nope").string()) != std::string::npos);
  CHECK(missing.out.empty());
  write(t.path / "file.txt", "words\n");
  auto file = run({wordfreq, (t.path / "file.txt").string()});
  CHECK(file.exited(2));
  CHECK(file.err.find("not a directory: " + (t.path / "file.txt").string()) != std::string::npos);
  const std::vector<std::vector<std::string>> bad = {
      {"--top", "ten"},     {"--threads", "0"},
      {"--rate", "-1"},     {"--top"},
      {"--role", "worker"}, {"--redis", "redis://127.0.0.1:1"},
      {"--frobnicate"},     {t.path.string(), t.path.string()}};
  for (const auto& args : bad) {
    std::vector<std::string> cmd{wordfreq};
    cmd.insert(cmd.end(), args.begin(), args.end());
    auto r = run(cmd);
    INFO(args.front());
    CHECK(r.exited(2));
    CHECK(r.err.find("usage: wordfreq") != std::string::npos);
  }
  auto help = run({wordfreq, "--help"});
  CHECK(help.exited(0));
  CHECK(help.out.find("usage: wordfreq") != std::string::npos);
}

TEST_CASE("wordfreq --rate reads at most that many files per second") {
  temp_dir t;
  for (int i = 0; i < 6; ++i) write(t.path / ("f" + std::to_string(i)), "word\n");
  auto start = std::chrono::steady_clock::now();
  auto r = run({wordfreq, "--rate", "10", t.path.string()});
  auto took = std::chrono::steady_clock::now() - start;
  REQUIRE(r.exited(0));
  CHECK(r.out == "      6 word\n");
  CHECK(took >= 450ms);  // a lower bound only: the first file at once, 5 more 100 ms apart
}

TEST_CASE("wordfreq shows a progress line on a terminal, then clears it") {
  temp_dir t;
  for (int i = 0; i < 8; ++i) write(t.path / ("f" + std::to_string(i)), "word\n");
  int master = ::posix_openpt(O_RDWR | O_NOCTTY);
  REQUIRE(master >= 0);
  REQUIRE(::grantpt(master) == 0);
  REQUIRE(::unlockpt(master) == 0);
  int slave = ::open(::ptsname(master), O_RDWR | O_NOCTTY);
  REQUIRE(slave >= 0);
  std::string seen;
  std::thread reader([&] {  // drains the terminal until the child and we have closed it
    char buf[512];
    for (ssize_t n; (n = ::read(master, buf, sizeof buf)) > 0;)
      seen.append(buf, static_cast<std::size_t>(n));
  });
  run_result r;
  {
    test_support::child c({wordfreq, "--rate", "10", t.path.string()}, {.stderr_fd = slave});
    ::close(slave);
    r = c.finish(60s);
  }
  reader.join();  // read() fails with EIO once no process holds the terminal open
  ::close(master);
  REQUIRE(r.exited(0));
  CHECK(r.out == "      8 word\n");
  CHECK(seen.find(" / 8 files") != std::string::npos);
  CHECK(seen.find("MB/s") != std::string::npos);
  CHECK(seen.find("ETA") != std::string::npos);
  CHECK(seen.find("\r\033[Kwordfreq: 8 files") != std::string::npos);  // cleared before the summary
}

namespace {
struct redis_job_result {
  run_result producer, worker1, worker2;
};

// Runs the producer of `job` over dir against `url`, then (once `queued()` says it has queued
// `files` paths and `between` has run) two worker processes of two threads each; waits for all
// three.
template <class Q, class F>
redis_job_result run_over(const std::string& url, Q queued, const std::string& job,
                          const fs::path& dir, long files, F between) {
  test_support::child producer(wordfreq_cmd(
      {"--redis", url, "--role", "producer", "--job", job, "--top", "0", dir.string()}));
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (queued() < files && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);  // polling Redis state with a bounded deadline
  REQUIRE(queued() == files);
  between();
  std::vector<std::string> worker = {"--redis", url, "--role",    "worker",
                                     "--job",   job, "--threads", "2"};
  test_support::child w1(wordfreq_cmd(worker)), w2(wordfreq_cmd(worker));
  redis_job_result r{producer.finish(120s), w1.finish(60s), w2.finish(60s)};
  INFO(r.producer.err);
  INFO(r.worker1.err);
  INFO(r.worker2.err);
  REQUIRE(r.producer.exited(0));
  CHECK(r.worker1.exited(0));
  CHECK(r.worker2.exited(0));
  return r;
}

// run_over() on the single server `srv`.
template <class F>
redis_job_result run_over_redis(const test_support::redis_server& srv, const std::string& job,
                                const fs::path& dir, long files, F between) {
  spindle::redis::connection c({.port = srv.port()});
  const std::string ready = "{" + job + ":files}:ready";
  return run_over(
      "redis://127.0.0.1:" + std::to_string(srv.port()),
      [&] { return c.command("LLEN", ready).integer(); }, job, dir, files, between);
}
}  // namespace

TEST_CASE("over Redis, a producer and two worker processes give the in-process result") {
  if (!test_support::redis_server::available()) return;
  test_support::redis_server srv;
  temp_dir t;
  make_tree(t.path);
  write(t.path / "dup.txt", "dup DUP\n");
  auto local = run(wordfreq_cmd({"--top", "0", t.path.string()}));
  REQUIRE(local.exited(0));
  // Once every path is queued (the producer has reset the job), a stray duplicate tally of
  // dup.txt arrives, as from a worker that died after reporting and before its ack: it must not
  // be counted twice.
  auto r = run_over_redis(srv, "t1", t.path, 30, [&] {
    std::string dup = (t.path / "dup.txt").string() + std::string(
                                                          "\0"
                                                          "8\0\0dup 2\n",
                                                          10);
    spindle::redis::stream<std::string> tallies("t1:tallies", {.port = srv.port()},
                                                {.group = "producer"});
    REQUIRE(tallies.push(dup) == spindle::status::ok);
  });
  CHECK(r.producer.out == local.out);  // byte for byte
  CHECK(parse_counts(r.producer.out)["dup"] == 2);
  CHECK(r.producer.err.find("skipped " + (t.path / "a/unreadable.txt").string() +
                            ": Permission denied") != std::string::npos);
  CHECK(r.producer.err.find("30 files (2 skipped)") != std::string::npos);
}

TEST_CASE("over Redis, /usr/share/common-licenses gives the in-process result") {
  if (!test_support::redis_server::available()) return;
  test_support::redis_server srv;
  const fs::path dir = "/usr/share/common-licenses";
  auto local = run({wordfreq, "--top", "0", dir.string()});
  REQUIRE(local.exited(0));
  long files = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    files += e.is_regular_file() && !e.is_symlink();
  auto r = run_over_redis(srv, "t3", dir, files, [] {});
  CHECK(r.producer.out == local.out);
}

TEST_CASE("a producer with no workers gives up after --wait seconds with a clear message") {
  if (!test_support::redis_server::available()) return;
  test_support::redis_server srv;
  temp_dir t;
  write(t.path / "a.txt", "alone\n");
  auto r = run({wordfreq, "--redis", "redis://127.0.0.1:" + std::to_string(srv.port()), "--role",
                "producer", "--job", "t2", "--wait", "1", t.path.string()});
  CHECK(r.exited(1));
  CHECK(r.err.find("1 files left: are workers running") != std::string::npos);
}

TEST_CASE("over Redis Cluster (redis+cluster://), the job gives the in-process result") {
  if (!test_support::redis_cluster::available()) return;
  test_support::redis_cluster cl;
  temp_dir t;
  make_tree(t.path);
  auto local = run(wordfreq_cmd({"--top", "0", t.path.string()}));
  REQUIRE(local.exited(0));
  spindle::redis::cluster c(cl.url());
  const std::string ready = "{t4:files}:ready";
  auto r = run_over(
      cl.url(), [&] { return c.command("LLEN", ready).integer(); }, "t4", t.path, 29, [] {});
  CHECK(r.producer.out == local.out);  // byte for byte
  CHECK(r.producer.err.find("29 files (2 skipped)") != std::string::npos);
}
