"""cffi API-mode build of the C code (module ``bms._core``), used by setup.py's cffi_modules.

One module, three parts: the numeric core (ssb_core.h/.c), the protection engine
(ssb_protect.h/.c) and the CSV row formatter (ssb_format.h/.c). The cdef below is the public
headers minus preprocessor lines, so the headers stay the one source of truth: a change there
shows up here without a second copy.

Compiler flags: C11, -O3, no errno and no trapping math (lets the branch-free loops
vectorise; the core never reads errno or FP exception flags), warnings as errors.
docs/estimation.md gives what each flag changed. The extension is compiled on the machine that
runs it (pip install), so on x86-64 it targets that CPU (-march=native: AVX2/AVX-512 lanes);
SSB_CORE_PORTABLE=1 builds for any x86-64-v2 CPU instead (for a wheel that travels).
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
PARTS = ("ssb_core", "ssb_protect", "ssb_format", "ssb_frontend", "ssb_plant", "ssb_wire")
HEADERS = [HERE / f"{p}.h" for p in PARTS]
# The reference firmware's protocol codec, compiled in as is (one C codec for firmware and host;
# csrc/ssb_wire.c batches it). proto.h is not part of the cdef: Python only sees ssb_wire.h.
FIRMWARE_SRC = HERE.parent / "boards" / "firmware" / "src"
SOURCES = [str(HERE / f"{p}.c") for p in PARTS] + [str(FIRMWARE_SRC / "proto.c")]
CFLAGS = ["-std=c11", "-O3", "-Wall", "-Wextra", "-Werror", "-fno-math-errno",
          "-fno-trapping-math"]
if platform.machine().lower() in ("x86_64", "amd64"):
    CFLAGS.append("-march=x86-64-v2" if os.environ.get("SSB_CORE_PORTABLE") == "1"
                  else "-march=native")


def cdef_text() -> str:
    """The headers as cffi's cdef: drop preprocessor lines and comments, keep #define integers
    (non-integer #defines, e.g. SSB_PROT_TIME_EPS_S, stay C-only)."""
    text = "\n".join(h.read_text(encoding="utf-8") for h in HEADERS)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out = []
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"#define\s+(SSB_\w+)\s+\(?(-?\d+)u?\)?\s*$", s)
        m2 = re.match(r"#define\s+(SSB_\w+)\s+\(1u << (\d+)\)\s*$", s)
        if m2:
            out.append(f"#define {m2.group(1)} {1 << int(m2.group(2))}")
        elif m:
            out.append(f"#define {m.group(1)} {m.group(2)}")
        elif s.startswith("#"):
            continue
        else:
            out.append(line)
    return "\n".join(out)


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "bms._core",
    "\n".join(f'#include "{h.name}"' for h in HEADERS),
    sources=[os.path.relpath(s) for s in SOURCES],
    include_dirs=[str(HERE), str(FIRMWARE_SRC)],
    extra_compile_args=CFLAGS,
    libraries=["m"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
