#!/usr/bin/env python3
"""Prints why each skipped test skipped, from a CTest JUnit file (ctest --output-junit).

Usage: skipped-tests.py JUNIT.xml
CTest's console lists skipped tests without their output; this prints one line per
skipped test: its name and its skip message (the first output line that mentions a skip,
e.g. "SKIPPED: no CUDA device: GPU k-means test not run", else its last output line).
Standard library only.
"""
import re
import sys
import xml.etree.ElementTree as ET


def reason(out):
    lines = [l.strip() for l in (out or "").splitlines() if l.strip()]
    for l in lines:  # pkv's tests: "SKIPPED: why" (Catch2 v2 WARN, scripts) or "SKIP: why"
        m = re.search(r"\bSKIP(PED)?: .*", l)
        if m:
            return m.group(0)
    for i, l in enumerate(lines):  # Catch2 v3 SKIP(): "file:line: skipped:" then the message
        if l.lower().endswith("skipped:") and i + 1 < len(lines):
            return lines[i + 1]
    return lines[-1] if lines else "(no output)"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    try:
        root = ET.parse(sys.argv[1]).getroot()
    except (OSError, ET.ParseError) as e:
        print(f"skipped tests: cannot read {sys.argv[1]}: {e}")
        return
    skipped = [tc for tc in root.iter("testcase") if tc.find("skipped") is not None]
    if not skipped:
        print("skipped tests: none")
        return
    print(f"skipped tests ({len(skipped)}), and why:")
    for tc in skipped:
        print(f"  {tc.get('name')}: {reason(tc.findtext('system-out'))}")


if __name__ == "__main__":
    main()
