#!/usr/bin/env bash
# Appends the named prompts of prompts.txt to the committed library
# (host/prompts/library.ulaw and manifest.json) without touching the
# clips already there (sox dithers, so a whole new run would change every
# clip's bytes). Same voice and processing as generate.sh; `beep` is a
# 1 kHz tone for 0.4 s made by sox, not a voice. Usage:
#   tools/prompts/append.sh NAME [NAME ...]
# Needs: flite, sox, python3 (apt-get install flite sox).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../../host/prompts"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for name in "$@"; do
    text="$(awk -F'\t' -v n="$name" '$1 == n { print $2 }' "$here/prompts.txt")"
    [ -n "$text" ] || { echo "no prompt $name in prompts.txt" >&2; exit 2; }
    if [ "$name" = beep ]; then
        sox -n -r 8000 -c 1 -t raw -e mu-law -b 8 "$work/$name.ulaw" synth 0.4 sine 1000 vol 0.5
    else
        flite -voice slt -t "$text" -o "$work/$name.wav"
        sox "$work/$name.wav" -r 8000 -c 1 -t raw -e mu-law -b 8 "$work/$name.ulaw" \
            norm -3 silence 1 0.05 0.5% reverse silence 1 0.05 0.5% reverse
    fi
    printf '%s\t%s\n' "$name" "$text" >> "$work/names.txt"
done
python3 - "$work" "$out" <<'PY'
import hashlib, json, sys
work, out = sys.argv[1:]
manifest = json.load(open(f"{out}/manifest.json"))
lib = bytearray(open(f"{out}/library.ulaw", "rb").read())
known = {p["name"] for p in manifest["prompts"]}
for line in open(f"{work}/names.txt", encoding="utf-8"):
    name, text = line.rstrip("\n").split("\t", 1)
    if name in known:
        sys.exit(f"{name} is already in the library")
    clip = bytearray(open(f"{work}/{name}.ulaw", "rb").read())
    clip += b"\xff" * (-len(clip) % 160)  # µ-law silence to a whole frame
    manifest["prompts"].append({
        "name": name, "text": text, "offset": len(lib), "bytes": len(clip),
        "sha256": hashlib.sha256(clip).hexdigest(),
    })
    lib += clip
    known.add(name)
manifest["library_sha256"] = hashlib.sha256(lib).hexdigest()
open(f"{out}/library.ulaw", "wb").write(lib)
open(f"{out}/manifest.json", "w").write(json.dumps(manifest, indent=1) + "\n")
print(f"{len(manifest['prompts'])} prompts, {len(lib)} bytes ({len(lib)/8000:.1f} s)")
PY
