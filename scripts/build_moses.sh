#!/usr/bin/env bash
# Build the Moses decoder, its tuning programs (mert, extractor, evaluator, kbmira, pro), its
# phrase-extraction programs (extract, score, consolidate, lexical-reordering-score, symal) and
# fast_align once, into a cache outside the clone:
#   ${RNNENC_CACHE:-~/.cache/rnnenc}/moses-<commit>/{bin,scripts}
# rnnenc finds it through MOSES_HOME, then that cache. Idempotent: an existing build is reused.
# Prints the build's directory on its last line.
#
# Sources (no network needed):
#   MOSES_SRC       a mosesdecoder work tree, or a bare git directory (a snapshot) whose HEAD is archived
#   FAST_ALIGN_SRC  the same for clab/fast_align (optional: without it no fast_align is built)
# Where neither is set and the network allows, the two repositories are cloned from GitHub.
#   MOSES_OPT       the compiler's optimisation for Moses (default -O1: the build takes under an hour on
#                   two busy cores at -O1, well over an hour at bjam's -O3)
#   JOBS            parallel compile jobs (default: the number of cores)
set -euo pipefail

CACHE="${RNNENC_CACHE:-$HOME/.cache/rnnenc}"
MOSES_OPT="${MOSES_OPT:--O1}"
JOBS="${JOBS:-$(nproc)}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

say() { echo "build_moses: $*" >&2; }

# A directory of sources from a work tree or a bare git directory; prints "<commit> <dir>".
unpack() {  # name source-or-empty github-url
  local name="$1" src="$2" url="$3" dest="$work/$1"
  if [ -z "$src" ]; then
    say "no ${name} sources given; cloning $url"
    git clone -q --depth 1 "$url" "$dest" >&2 || { say "could not clone $url: set the sources' variable"; exit 1; }
    echo "$(git -C "$dest" rev-parse HEAD) $dest"
  elif [ -f "$src/HEAD" ] && [ -d "$src/objects" ]; then  # a bare git directory
    # A snapshot may lack blobs that nothing builds (mosesdecoder's lacks two of
    # contrib/promix/test_data, and `git archive` fails on them even when excluded): check out
    # every file whose blob is there, through an index of our own.
    local index="$work/$name.index" listing="$work/$name.files"
    git --git-dir "$src" ls-tree -r HEAD | awk -F '\t' '{split($1, f, " "); if (f[2] == "blob") print f[3] "\t" $2}' \
      > "$listing"
    GIT_INDEX_FILE="$index" git --git-dir "$src" read-tree HEAD
    cut -f1 "$listing" | git --git-dir "$src" cat-file --batch-check | paste - "$listing" \
      | awk -F '\t' '$1 ~ / missing$/ {print $3}' > "$listing.missing"
    if [ -s "$listing.missing" ]; then
      say "$name: $(wc -l < "$listing.missing") file(s) missing from the snapshot, left out: $(head -c 300 "$listing.missing" | tr '\n' ' ')"
      tr '\n' '\0' < "$listing.missing" | GIT_INDEX_FILE="$index" xargs -0 \
        git --git-dir "$src" --work-tree "$work" update-index --force-remove --
    fi
    GIT_INDEX_FILE="$index" git --git-dir "$src" --work-tree "$work" checkout-index -a -f --prefix="$dest/"
    echo "$(git --git-dir "$src" rev-parse HEAD) $dest"
  elif [ -d "$src" ]; then
    cp -a "$src" "$dest"
    echo "$(git -C "$src" rev-parse HEAD 2>/dev/null || echo local) $dest"
  else
    say "$src: no such directory"
    exit 1
  fi
}

# The commit names the cache entry; find it before unpacking anything, so a cached build costs nothing.
commit_of() {
  local src="$1"
  if [ -z "$src" ]; then echo ""; return; fi
  if [ -f "$src/HEAD" ] && [ -d "$src/objects" ]; then git --git-dir "$src" rev-parse HEAD; return; fi
  git -C "$src" rev-parse HEAD 2>/dev/null || echo local
}
commit="$(commit_of "${MOSES_SRC:-}")"
if [ -n "$commit" ] && [ "$commit" != local ]; then
  PREFIX="$CACHE/moses-${commit:0:12}"
  if [ -x "$PREFIX/bin/moses" ] && [ -f "$PREFIX/BUILT" ]; then
    echo "$PREFIX"
    exit 0
  fi
fi

APT_PACKAGES=(build-essential cmake libboost-all-dev zlib1g-dev libbz2-dev liblzma-dev git perl)
missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing with apt-get: ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  else
    say "missing ${missing[*]}. Install them (sudo apt-get install ${APT_PACKAGES[*]}), then rerun."
    exit 1
  fi
fi

read -r commit moses < <(unpack mosesdecoder "${MOSES_SRC:-}" https://github.com/moses-smt/mosesdecoder.git)
PREFIX="$CACHE/moses-${commit:0:12}"
if [ -x "$PREFIX/bin/moses" ] && [ -f "$PREFIX/BUILT" ]; then
  echo "$PREFIX"
  exit 0
fi

# Only what rnnenc drives: the decoder, tuning, and the phrase-extraction programs of
# train-model.perl. The full `programs` alias (syntax models, servers, moses2...) doubles the build.
python3 - "$moses/Jamroot" <<'EOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
wanted = ("alias programs :\nmoses-cmd//moses\nmert//mert mert//extractor mert//evaluator mert//kbmira mert//pro\n"
          "symal\nphrase-extract\nphrase-extract//lexical-reordering\n;\n")
text, n = re.subn(r"alias programs :.*?\n;\n", wanted, text, count=1, flags=re.S)
if n != 1:
    sys.exit("build_moses: Jamroot has no 'alias programs' block to restrict")
open(path, "w").write(text)
EOF
# bjam's <optimization>speed is -O3; passing cxxflags= instead makes its dependency scan take minutes
sed -i "s/<optimization>speed : -O3 ;/<optimization>speed : ${MOSES_OPT} ;/" "$moses/jam-files/boost-build/tools/gcc.jam"

say "compiling Moses at ${MOSES_OPT} with ${JOBS} job(s) (about an hour on 2 cores, once)"
started=$(date +%s)
(cd "$moses" && ./bjam --no-xmlrpc-c --without-tcmalloc -j"$JOBS" --prefix="$work/install" -q prefix-bin) >&2 \
  || { say "bjam failed (its output is above)"; exit 1; }
say "Moses built in $(( $(date +%s) - started )) s"

mkdir -p "$PREFIX.tmp"
rm -rf "${PREFIX:?}.tmp/"*
cp -a "$work/install/bin" "$PREFIX.tmp/bin"
cp -a "$moses/scripts" "$PREFIX.tmp/scripts"

if [ -n "${FAST_ALIGN_SRC:-}" ] || [ -z "${MOSES_SRC:-}" ]; then
  read -r fa_commit fast_align < <(unpack fast_align "${FAST_ALIGN_SRC:-}" https://github.com/clab/fast_align.git)
  say "compiling fast_align ${fa_commit:0:12}"
  cmake -S "$fast_align" -B "$work/fast_align-build" -DCMAKE_BUILD_TYPE=Release >&2
  cmake --build "$work/fast_align-build" -j "$JOBS" >&2
  cp "$work/fast_align-build/fast_align" "$work/fast_align-build/atools" "$PREFIX.tmp/bin/"
fi
echo "moses ${commit} ${MOSES_OPT}" > "$PREFIX.tmp/BUILT"
rm -rf "$PREFIX"
mv "$PREFIX.tmp" "$PREFIX"
echo "$PREFIX"
