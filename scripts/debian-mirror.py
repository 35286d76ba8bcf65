"""Print "URI KEYRING" for the Debian mirror this machine's own apt sources use.

Read from /etc/apt/sources.list, sources.list.d/*.list (one-line format) and
sources.list.d/*.sources (deb822): the first `deb` entry for the machine's own suite
(VERSION_CODENAME in /etc/os-release) that is not the security archive. KEYRING is the
entry's signed-by file, or "-". Nothing is changed; scripts/docker-engine.sh and
scripts/managed-plugin.sh use it to fetch from the same mirror without touching apt's
configuration. Exit 1 (and nothing printed) if there is none.
"""

from __future__ import annotations

import glob
import os
import re
import sys


def codename() -> str:
    with open("/etc/os-release") as handle:
        for line in handle:
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return ""


def one_line_entries(path: str) -> list[tuple[str, str, str]]:
    found = []
    with open(path) as handle:
        for line in handle:
            words = line.split("#", 1)[0].split()
            if not words or words[0] != "deb":
                continue
            words = words[1:]
            keyring = "-"
            if words and words[0].startswith("["):
                options = []
                while words:
                    word = words.pop(0)
                    options.append(word)
                    if word.endswith("]"):
                        break
                for option in " ".join(options).strip("[]").split():
                    if option.startswith("signed-by="):
                        keyring = option.split("=", 1)[1]
            if len(words) >= 2:
                found.append((words[1], words[0], keyring))
    return found


def deb822_entries(path: str) -> list[tuple[str, str, str]]:
    found = []
    with open(path) as handle:
        stanzas = re.split(r"\n\s*\n", handle.read())
    for stanza in stanzas:
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
            continue
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                found.append((suite, uri, fields.get("signed-by", "-") or "-"))
    return found


def main() -> int:
    entries = []
    lists = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]
    for path in lists:
        if os.path.exists(path):
            entries += one_line_entries(path)
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        entries += deb822_entries(path)
    suite = codename()
    for entry_suite, uri, keyring in entries:
        if entry_suite == suite and "security" not in uri:
            print(uri.rstrip("/"), keyring)
            return 0
    print(f"debian-mirror.py: no apt source for suite {suite!r} found", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
