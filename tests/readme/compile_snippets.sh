#!/bin/sh
# Compiles every ```cpp block of a Markdown file, so that the README's examples cannot rot.
# Each block becomes the body of its own function in one translation unit, after the umbrella
# headers and every #include line the blocks hold.
# Usage: compile_snippets.sh FILE.md COMPILER [FLAGS...]   (e.g. README.md c++ -Iinclude)
set -eu
md=$1
shift
tu=$(mktemp --suffix=.cpp)
trap 'rm -f "$tu"' EXIT
awk '
  /^```cpp[ \t]*$/ { inside = 1; n++; body = body "[[maybe_unused]] static void snippet_" n "() {\n"; next }
  /^```/ && inside { inside = 0; body = body "}\n"; next }
  inside && /^#include/ { includes = includes $0 "\n"; next }
  inside { body = body $0 "\n" }
  END {
    if (n == 0) { print "compile_snippets: no cpp block in " FILENAME > "/dev/stderr"; exit 1 }
    printf "#include <spindle/spindle.hpp>\n#include <spindle/redis.hpp>\n"
    printf "#include <cstdio>\n#include <functional>\n#include <optional>\n#include <stdexcept>\n"
    printf "#include <string>\n#include <thread>\n#include <vector>\n%s%s", includes, body
    printf "int main() { return 0; }\n"
    print n " snippets" > "/dev/stderr"
  }' "$md" > "$tu"
"$@" -std=c++20 -fsyntax-only -Wall -Wextra -Wpedantic -Werror -Wno-unused-variable \
  -Wno-unused-but-set-variable -x c++ "$tu"
echo "compile_snippets: every cpp block of $md compiles"
