#!/usr/bin/env python3
"""Summarises a perf profile of tunnel daemons for bench-throughput.sh.

Reads `perf report --stdio --no-children -n --sort dso,sym -g none` on
stdin and prints:

  * the split of the daemons' time into the AEAD (ChaCha20-Poly1305 seal and
    open, whichever library), the kernel and the rest of user space, as
    shares of the samples and, given --ns-per-byte (the daemons' CPU time
    per byte moved, from /proc), as nanoseconds per byte moved;
  * the top symbols.

wireguard-go ships stripped, so perf shows its functions as bare addresses.
With --go-binary, those addresses are named from the function table every
Go binary carries for its own stack traces (.gopclntab), so the two
implementations' profiles can be read side by side. Anything this script
cannot parse is left as perf printed it.
"""

import argparse
import bisect
import re
import struct
import sys

AEAD = re.compile(r"chacha20_?poly1305.*(seal|open)", re.IGNORECASE)
# "  12.34%   5678  dso  [.] symbol"
LINE = re.compile(r"^\s*([\d.]+)%\s+(\d+)\s+(\S+)\s+\[([.k])\]\s+(.*\S)\s*$")


class GoSymbols:
    """Function names of a Go binary (1.18 or later), by virtual address."""

    def __init__(self, path):
        with open(path, "rb") as f:
            data = f.read()
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise ValueError("not a little-endian 64-bit ELF file")
        self.loads = self._load_segments(data)
        table = self._section(data, b".gopclntab")
        if table is None:
            raise ValueError("no .gopclntab section")
        start, size = table
        magic = struct.unpack_from("<I", data, start)[0]
        if magic not in (0xFFFFFFF0, 0xFFFFFFF1):  # Go 1.18-1.19, 1.20+
            raise ValueError(f"unknown .gopclntab version {magic:#x}")
        nfunc, _nfiles, text, names, _cu, _files, _pc, functab = struct.unpack_from(
            "<8Q", data, start + 8
        )
        entries = []
        for i in range(nfunc):
            at = start + functab + 8 * i
            if at + 8 > start + size:
                raise ValueError("function table runs past its section")
            entry, func = struct.unpack_from("<II", data, at)
            name_off = struct.unpack_from("<i", data, start + functab + func + 4)[0]
            s = start + names + name_off
            e = data.find(b"\0", s, start + size)
            if s < start or e < 0:
                raise ValueError("function name outside its section")
            entries.append((text + entry, data[s:e].decode("utf-8", "replace")))
        entries.sort()
        self.starts = [a for a, _ in entries]
        self.names = [n for _, n in entries]

    @staticmethod
    def _load_segments(data):
        phoff, = struct.unpack_from("<Q", data, 32)
        phentsize, phnum = struct.unpack_from("<HH", data, 54)
        loads = []
        for i in range(phnum):
            p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
                "<IIQQQQ", data, phoff + i * phentsize
            )
            if p_type == 1:  # PT_LOAD
                loads.append((p_offset, p_vaddr, p_filesz))
        return loads

    @staticmethod
    def _section(data, wanted):
        shoff, = struct.unpack_from("<Q", data, 40)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 58)

        def header(i):
            return struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)

        strtab = header(shstrndx)[4]
        for i in range(shnum):
            name, _type, _flags, _addr, offset, size = header(i)
            end = data.find(b"\0", strtab + name)
            if data[strtab + name:end] == wanted:
                return offset, size
        return None

    def name(self, file_offset):
        """The function at a file offset, as perf prints unnamed samples."""
        for off, vaddr, size in self.loads:
            if off <= file_offset < off + size:
                addr = file_offset - off + vaddr
                i = bisect.bisect_right(self.starts, addr) - 1
                return self.names[i] if i >= 0 else None
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--go-binary", help="name the functions of this stripped Go binary")
    ap.add_argument("--ns-per-byte", type=float, help="the daemons' CPU ns per byte moved")
    ap.add_argument("--top", type=int, default=30, help="symbols to list (default 30)")
    args = ap.parse_args()

    go = None
    if args.go_binary:
        try:
            go = GoSymbols(args.go_binary)
        except (OSError, ValueError, struct.error, IndexError) as e:
            print(f"(could not read Go symbols from {args.go_binary}: {e})")

    samples = {}
    for line in sys.stdin:
        m = LINE.match(line)
        if not m:
            continue
        count, dso, space, sym = int(m.group(2)), m.group(3), m.group(4), m.group(5)
        if go and space == "." and re.fullmatch(r"0x[0-9a-f]+", sym):
            sym = go.name(int(sym, 16)) or sym
        key = (space, sym if space == "k" else f"{sym}  ({dso})")
        samples[key] = samples.get(key, 0) + count
    total = sum(samples.values())
    if total == 0:
        print("no samples")
        return

    parts = {"AEAD (seal + open)": 0, "kernel": 0, "other user space": 0}
    for (space, sym), n in samples.items():
        if space == "k":
            parts["kernel"] += n
        elif AEAD.search(sym):
            parts["AEAD (seal + open)"] += n
        else:
            parts["other user space"] += n
    print(f"## where the daemons' time goes ({total} samples)")
    for part, n in parts.items():
        share = n / total
        per_byte = f"  {share * args.ns_per_byte:5.2f} ns per byte moved" if args.ns_per_byte else ""
        print(f"{part:20} {100 * share:5.1f} %{per_byte}")
    print("## top symbols")
    for (space, sym), n in sorted(samples.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{100 * n / total:6.2f} %  [{space}] {sym}")


if __name__ == "__main__":
    main()
