"""cffi API-mode builds of the C code, one compiled module per layer (setup.py's cffi_modules):

- ``bms._core`` (``core_ffibuilder``): the BMS control path: the numeric core (ssb_core), the
  protection engine (ssb_protect), the CSV row formatter (ssb_format) and the measurement front
  end (ssb_frontend) and the stack chain that runs it and the core in one call (ssb_stack),
  the balancing decision (ssb_balance), the current sensor's plausibility check (ssb_current),
  the cooling check's per-tick work (ssb_thermal);
- ``hil._wire`` (``wire_ffibuilder``): the frame codec, csrc/ssb_wire.c batching the reference
  firmware's boards/firmware/src/proto.c (one C codec for firmware and host);
- ``hil.emulator._plant`` (``plant_ffibuilder``): the emulator's plant step (ssb_plant) and the
  board's one-call SAMPLE (ssb_board: frame check, step, sensor read, MEASUREMENT frame; it
  links proto.c too, so the emulator's fast lane needs no call into hil._wire).

So an emulator process loads the wire codec and the plant, never the estimator. Each cdef is its
public headers minus preprocessor lines, so the headers stay the one source of truth: a change
there shows up here without a second copy.

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
# module name -> its parts (csrc/NAME.h + NAME.c each)
MODULES = {
    # (ssb_current before ssb_stack: the cdef is the headers in this order, and the stack's
    # struct holds the current check's)
    "bms._core": ("ssb_core", "ssb_protect", "ssb_format", "ssb_frontend", "ssb_current",
                  "ssb_stack", "ssb_balance", "ssb_thermal"),
    "hil._wire": ("ssb_wire",),
    "hil.emulator._plant": ("ssb_plant", "ssb_board"),
}
# The reference firmware's protocol codec, compiled into hil._wire as is (csrc/ssb_wire.c batches
# it). proto.h is not part of the cdef: Python only sees ssb_wire.h.
FIRMWARE_SRC = HERE.parent / "boards" / "firmware" / "src"
EXTRA_SOURCES = {"hil._wire": [FIRMWARE_SRC / "proto.c"],
                 "hil.emulator._plant": [FIRMWARE_SRC / "proto.c"]}
CFLAGS = ["-std=c11", "-O3", "-Wall", "-Wextra", "-Werror", "-fno-math-errno",
          "-fno-trapping-math"]
if platform.machine().lower() in ("x86_64", "amd64"):
    CFLAGS.append("-march=x86-64-v2" if os.environ.get("SSB_CORE_PORTABLE") == "1"
                  else "-march=native")


def cdef_text(headers: list[Path]) -> str:
    """The headers as cffi's cdef: drop preprocessor lines and comments, keep #define integers
    (non-integer #defines, e.g. SSB_PROT_TIME_EPS_S, stay C-only)."""
    text = "\n".join(h.read_text(encoding="utf-8") for h in headers)
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


def make_builder(module: str) -> FFI:
    """The cffi builder of one module of MODULES."""
    headers = [HERE / f"{p}.h" for p in MODULES[module]]
    sources = [HERE / f"{p}.c" for p in MODULES[module]] + EXTRA_SOURCES.get(module, [])
    builder = FFI()
    builder.cdef(cdef_text(headers))
    builder.set_source(
        module,
        "\n".join(f'#include "{h.name}"' for h in headers),
        sources=[os.path.relpath(s) for s in sources],
        include_dirs=[str(HERE), str(FIRMWARE_SRC)],
        extra_compile_args=CFLAGS,
        libraries=["m"],
    )
    return builder


core_ffibuilder = make_builder("bms._core")
wire_ffibuilder = make_builder("hil._wire")
plant_ffibuilder = make_builder("hil.emulator._plant")

if __name__ == "__main__":
    for b in (core_ffibuilder, wire_ffibuilder, plant_ffibuilder):
        b.compile(verbose=True)
