#!/usr/bin/env bash
# The HTML report renders in a real browser: headless Chromium takes a screenshot of
# a full-size sample page (30 layers x 3 KV heads, every method), and of one of a
# model with local sliding-window layers, and the pictures must not be blank. The page comes from the hidden Catch2 case [.sample] of
# pkv_report_tests. Set PKV_KEEP_SCREENSHOT=path.png to keep the screenshot.
# Skips (77) without Debian's chromium or python3-pil.
source "$(dirname "$0")/common.bash"

CHROMIUM="$(command -v chromium || command -v chromium-browser || true)"
if [ -z "$CHROMIUM" ]; then
  echo "SKIP: chromium is not installed (apt-get install chromium)" >&2
  exit 77
fi
if ! /usr/bin/python3 -c 'import PIL.Image' 2>/dev/null; then
  echo "SKIP: /usr/bin/python3 has no PIL (apt-get install python3-pil)" >&2
  exit 77
fi
TESTS="$PKV_BUILD_DIR/test/pkv_report_tests"
if [ ! -x "$TESTS" ]; then
  echo "FAIL: $TESTS not built (make pkv_report_tests)" >&2
  exit 1
fi

PAGE="$WORK/report.html"
SHOT="$WORK/report.png"
if PKV_REPORT_SAMPLE_HTML="$PAGE" "$TESTS" '[.sample]' >"$WORK/sample.log" 2>&1 && [ -s "$PAGE" ]; then
  pass "sample page written ($(wc -c <"$PAGE") bytes)"
else
  failed "writing the sample page: $(cat "$WORK/sample.log")"
  finish; exit
fi

# check_page PAGE SHOT NAME: the page is self-contained, renders in headless Chromium,
# and the screenshot is not blank.
check_page() {
  local PAGE="$1" SHOT="$2" NAME="$3" rc
  # The page must not ask for anything over the network (no scripts, links or sources).
  if grep -qiE '<script|<link|src=|href=|url\(' "$PAGE"; then
    failed "$NAME refers to external resources or scripts: $(grep -oiE '<script|<link|src=[^ >]*|href=[^ >]*|url\([^)]*\)' "$PAGE" | head -3)"
  else
    pass "$NAME is self-contained"
  fi

  # Its own profile directory keeps parallel runs apart; the sandbox needs privileges
  # a test runner (often root in a container) lacks.
  timeout 180 "$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
    --user-data-dir="$WORK/profile" --window-size=1280,2000 --screenshot="$SHOT" "file://$PAGE" \
    >"$WORK/chromium.log" 2>&1
  rc=$?
  if [ "$rc" -ne 0 ] || [ ! -s "$SHOT" ]; then
    failed "$NAME: chromium exit $rc, no screenshot: $(tail -n 5 "$WORK/chromium.log")"
    finish; exit
  fi
  pass "$NAME: chromium screenshot taken"

  # Not blank: enough ink, many colors (plots, heatmap ramp), and ink in both the top
  # (header, table) and the bottom (plots) half of the window.
  if /usr/bin/python3 - "$SHOT" <<'PY'
import sys
from PIL import Image
im = Image.open(sys.argv[1]).convert("RGB")
w, h = im.size
px = im.load()
ink = top = bottom = 0
colors = set()
for y in range(0, h, 2):
    for x in range(0, w, 2):
        r, g, b = px[x, y]
        colors.add((r, g, b))
        if min(r, g, b) < 235:
            ink += 1
            if y < h // 2: top += 1
            else: bottom += 1
total = ((h + 1) // 2) * ((w + 1) // 2)
share = ink / total
print(f"screenshot {w}x{h}: {share:.1%} non-white pixels, {len(colors)} distinct colors, ink top/bottom {top}/{bottom}")
ok = (w, h) == (1280, 2000) and share >= 0.02 and len(colors) > 64 and top > 0.005 * total and bottom > 0.005 * total
sys.exit(0 if ok else 1)
PY
  then
    pass "$NAME: screenshot is not blank"
  else
    failed "$NAME: screenshot looks blank or too plain"
  fi
}

check_page "$PAGE" "$SHOT" "sample page"
# The same page for a model with local sliding-window layers (its own section).
if [ -s "$PAGE.local.html" ]; then
  check_page "$PAGE.local.html" "$WORK/report.local.png" "local-layer page"
else
  failed "the local-layer sample page was not written"
fi

if [ -n "${PKV_KEEP_SCREENSHOT:-}" ]; then
  cp "$SHOT" "$PKV_KEEP_SCREENSHOT" && echo "screenshot kept at $PKV_KEEP_SCREENSHOT"
fi
finish
