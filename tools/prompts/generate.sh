#!/usr/bin/env bash
# Regenerates the built-in prompt library (host/prompts/): every line of
# prompts.txt ("name<TAB>text") spoken by flite, resampled by sox to 8 kHz
# mono G.711 µ-law, padded to whole 20 ms frames, concatenated into
# library.ulaw, and listed in manifest.json with its offset, length, text
# and SHA-256, and the versions of the tools that made it. The output is
# committed and embedded in the binary; CI checks the hashes and never
# runs this. Needs: flite, sox, python3 (apt-get install flite sox).
# sox dithers when it narrows to 8 bits, so a run changes every clip's
# bytes a little: to add a prompt without touching the others, append the
# new clip and its manifest entry to the committed library (as was done
# for enter-account-code) rather than committing a whole new run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../../host/prompts"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
: > "$work/library.ulaw"
while IFS=$'\t' read -r name text; do
    [ -z "$name" ] && continue
    flite -voice slt -t "$text" -o "$work/$name.wav"
    sox "$work/$name.wav" -r 8000 -c 1 -t raw -e mu-law -b 8 "$work/$name.ulaw" \
        norm -3 silence 1 0.05 0.5% reverse silence 1 0.05 0.5% reverse
done < "$here/prompts.txt"
python3 - "$here/prompts.txt" "$work" "$out" <<'PY'
import hashlib, json, subprocess, sys
listing, work, out = sys.argv[1:]
lib = bytearray()
entries = []
for line in open(listing, encoding="utf-8"):
    line = line.rstrip("\n")
    if not line:
        continue
    name, text = line.split("\t", 1)
    clip = bytearray(open(f"{work}/{name}.ulaw", "rb").read())
    clip += b"\xff" * (-len(clip) % 160)  # µ-law silence to a whole frame
    entries.append({
        "name": name, "text": text, "offset": len(lib), "bytes": len(clip),
        "sha256": hashlib.sha256(clip).hexdigest(),
    })
    lib += clip
def version(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    return (r.stdout + r.stderr).strip().splitlines()[-1 if cmd[0] == "flite" else 0].strip()
manifest = {
    "format": "G.711 mu-law, 8000 Hz, mono, raw; clips padded to 20 ms frames",
    "voice": "flite slt (CMU ARCTIC, BSD-style licence)",
    "tools": {"flite": version(["flite", "--version"]), "sox": version(["sox", "--version"])},
    "library_sha256": hashlib.sha256(lib).hexdigest(),
    "prompts": entries,
}
open(f"{out}/library.ulaw", "wb").write(lib)
open(f"{out}/manifest.json", "w").write(json.dumps(manifest, indent=1) + "\n")
print(f"{len(entries)} prompts, {len(lib)} bytes ({len(lib)/8000:.1f} s)")
PY
