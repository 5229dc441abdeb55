#!/usr/bin/env bash
# Installs the Debian packages the project needs (C checks, AVR firmware toolchain, simavr),
# only where one is missing. Needs root (as on CI and the developer machines); without root it
# says what is missing and the tests that need those tools skip with that reason (except under
# CI=true, where they must run).
set -euo pipefail
need=()
command -v cppcheck >/dev/null || need+=(cppcheck)
command -v avr-gcc >/dev/null || need+=(gcc-avr)
[ -f /usr/lib/avr/include/avr/io.h ] || need+=(avr-libc)
command -v simavr >/dev/null || need+=(simavr)
[ -f /usr/include/simavr/sim_avr.h ] || need+=(libsimavr-dev libsimavrparts1)
[ -f /usr/include/libelf.h ] || [ -f /usr/include/libelf/libelf.h ] || need+=(libelf-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v clang >/dev/null || need+=(clang)
ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 \
  || need+=(libclang-rt-14-dev)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-sysdeps: missing Debian packages: ${need[*]} (not root: not installing)" >&2
  [ "${CI:-}" = "true" ] && exit 1
  exit 0
fi
echo "install-sysdeps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
