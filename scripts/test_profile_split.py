"""Tests of profile-split.py, the benchmark's profile summary.

    python3 scripts/test_profile_split.py
"""

import importlib.util
import io
import os
import shutil
import sys
import tempfile
import unittest
from contextlib import redirect_stdout
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("profile_split", os.path.join(HERE, "profile-split.py"))
profile_split = importlib.util.module_from_spec(spec)
spec.loader.exec_module(profile_split)

REPORT = """\
# Samples: 1K of event 'cpu-clock:ppp'
#
# Overhead  Samples  Shared Object      Symbol
    40.00%      400  weft-wg            [.] ring_core_0_17_14__chacha20_poly1305_seal_avx2
    10.00%      100  weft-wg            [.] ring_core_0_17_14__chacha20_poly1305_open_sse41
    20.00%      200  [kernel.kallsyms]  [k] _copy_to_iter
     5.00%       50  [kernel.kallsyms]  [k] tun_do_read
    15.00%      150  wireguard-go       [.] golang.org/x/crypto/chacha20poly1305.chacha20Poly1305Open
    10.00%      100  libc.so.6          [.] __memmove_avx_unaligned_erms
"""


def run(stdin, *args):
    out = io.StringIO()
    with mock.patch.object(sys, "argv", ["profile-split.py", *args]), \
            mock.patch.object(sys, "stdin", io.StringIO(stdin)), redirect_stdout(out):
        profile_split.main()
    return out.getvalue()


class Split(unittest.TestCase):
    def test_shares_and_bytes(self):
        out = run(REPORT, "--ns-per-byte", "5")
        # Both libraries' seal and open count as the AEAD: 400 + 100 + 150.
        self.assertIn("AEAD (seal + open)    65.0 %   3.25 ns per byte moved", out)
        self.assertIn("kernel                25.0 %   1.25 ns per byte moved", out)
        self.assertIn("other user space      10.0 %   0.50 ns per byte moved", out)
        self.assertIn("(1000 samples)", out)

    def test_top_symbols_in_order(self):
        lines = run(REPORT, "--top", "2").splitlines()
        top = lines[lines.index("## top symbols") + 1:]
        self.assertEqual(len(top), 2)
        self.assertIn("chacha20_poly1305_seal_avx2", top[0])
        self.assertIn("[k] _copy_to_iter", top[1])

    def test_no_samples(self):
        self.assertEqual(run("# nothing\n").strip(), "no samples")


@unittest.skipUnless(os.path.exists("/usr/bin/wireguard-go"), "needs Debian's wireguard-go")
class GoSymbols(unittest.TestCase):
    BINARY = "/usr/bin/wireguard-go"

    def test_names_wireguard_go(self):
        go = profile_split.GoSymbols(self.BINARY)
        self.assertIn("main.main", go.names)
        self.assertIn("golang.zx2c4.com/wireguard/device.(*Device).RoutineReadFromTUN", go.names)
        # perf names an unnamed sample by its file offset; one inside
        # main.main (past its entry) must name main.main.
        i = go.names.index("main.main")
        entry = go.starts[i]
        offset = next(off + entry - vaddr for off, vaddr, size in go.loads if vaddr <= entry < vaddr + size)
        self.assertEqual(go.name(offset), "main.main")
        self.assertEqual(go.name(offset + 1), "main.main")
        self.assertNotEqual(go.name(offset - 1), "main.main")

    def test_resolves_a_report(self):
        go = profile_split.GoSymbols(self.BINARY)
        entry = go.starts[go.names.index("main.main")]
        offset = next(off + entry - vaddr for off, vaddr, size in go.loads if vaddr <= entry < vaddr + size)
        line = f"    10.00%      100  wireguard-go  [.] {offset + 4:#x}\n"
        self.assertIn("[.] main.main  (wireguard-go)", run(line, "--go-binary", self.BINARY))

    def test_not_go(self):
        with self.assertRaisesRegex(ValueError, "gopclntab"):
            profile_split.GoSymbols(shutil.which("true") or "/bin/true")
        with tempfile.NamedTemporaryFile() as f:
            f.write(b"not an ELF file at all, just text" * 4)
            f.flush()
            with self.assertRaisesRegex(ValueError, "ELF"):
                profile_split.GoSymbols(f.name)
            # The report still comes out, addresses as perf printed them.
            out = run("    10.00%      100  wireguard-go  [.] 0x1234\n", "--go-binary", f.name)
            self.assertIn("could not read Go symbols", out)
            self.assertIn("[.] 0x1234  (wireguard-go)", out)


if __name__ == "__main__":
    unittest.main()
