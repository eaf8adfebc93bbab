"""Boot benchmark: triad-vmm against QEMU microvm on the same test guest, same memory.

For each run: time from process start to the guest's first serial line (TRIAD-GUEST-READY),
then, with the guest halted, the VMM's overhead = peak RSS of the process minus the resident
part of the guest-RAM mapping (the memory the guest itself touched). Runs alternate between
the two VMMs so drift on a shared machine hits both alike.
"""

import os
import select
import signal
import statistics
import subprocess
import sys
import time

READY = b"TRIAD-GUEST-READY"


def guest_ram_rss_kib(pid, mem_mib):
    """Rss of the anonymous mapping that backs guest RAM (its size is the guest's memory)."""
    want = mem_mib * 1024
    best = None
    size = rss = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "Size:":
                size = int(parts[1])
            elif parts[0] == "Rss:":
                rss = int(parts[1])
                # QEMU pads RAM mappings for alignment; accept a few MiB above the size.
                if want <= size <= want + 4096 and (best is None or rss > best):
                    best = rss
    if best is None:
        raise RuntimeError(f"no {mem_mib} MiB guest-RAM mapping in /proc/{pid}/smaps")
    return best


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def one_boot(argv, mem_mib, env=None, timeout=10.0):
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        buf = b""
        fd = proc.stdout.fileno()
        while READY not in buf:
            left = timeout - (time.perf_counter() - start)
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise RuntimeError(f"{argv[0]}: no {READY.decode()} within {timeout} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                err = proc.stderr.read().decode(errors="replace")
                raise RuntimeError(f"{argv[0]} exited before READY: {err}")
            buf += chunk
        boot_ms = (time.perf_counter() - start) * 1000
        # Let the guest finish its last lines and halt before reading memory figures.
        time.sleep(0.05)
        overhead_kib = peak_rss_kib(proc.pid) - guest_ram_rss_kib(proc.pid, mem_mib)
        return boot_ms, overhead_kib / 1024
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def pct(values, p):
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def main():
    triad, qemu_root, guest, config_dir, runs, mem_mib = sys.argv[1:7]
    runs, mem_mib = int(runs), int(mem_mib)
    config = os.path.join(config_dir, "bench.json")
    with open(config, "w") as f:
        f.write('{"boot":{"kernel":"%s","cmdline":""},"machine":{"vcpus":1,"memory_mib":%d},'
                '"serial":{"mode":"stdout"}}' % (guest, mem_mib))
    # QEMU runs from its unpacked tree: the binary itself (not a wrapper script, whose shell
    # start-up would be charged to QEMU), its libraries and modules through the environment.
    qemu_env = dict(os.environ)
    qemu_env["LD_LIBRARY_PATH"] = ":".join(
        os.path.join(qemu_root, d) for d in ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"))
    qemu_env["QEMU_MODULE_DIR"] = os.path.join(qemu_root, "usr/lib/x86_64-linux-gnu/qemu")
    firmware = []
    for d in ("usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"):
        firmware += ["-L", os.path.join(qemu_root, d)]
    vmms = {
        "triad": ([triad, "--config", config], None),
        "qemu": ([os.path.join(qemu_root, "usr/bin/qemu-system-x86_64")] + firmware +
                 ["-M", "microvm,x-option-roms=off,acpi=off", "-enable-kvm",
                  "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
                  "-m", str(mem_mib), "-smp", "1", "-kernel", guest, "-append", ""], qemu_env),
    }
    results = {name: {"boot": [], "overhead": []} for name in vmms}
    for argv, env in vmms.values():  # warm the page cache for both binaries and the guest
        one_boot(argv, mem_mib, env)
    for _ in range(runs):
        for name, (argv, env) in vmms.items():
            boot_ms, overhead = one_boot(argv, mem_mib, env)
            results[name]["boot"].append(boot_ms)
            results[name]["overhead"].append(overhead)

    def line(label, unit, t, q):
        print(f"{label:<28} triad {t:8.2f} {unit:<4} qemu {q:8.2f} {unit:<4} triad/qemu {t / q:5.2f}")

    print(f"{runs} boots each, alternating; guest {os.path.basename(guest)}, {mem_mib} MiB, 1 vCPU")
    for p in (50, 90):
        line(f"boot to READY p{p}", "ms", pct(results["triad"]["boot"], p),
             pct(results["qemu"]["boot"], p))
    for p in (50, 90):
        line(f"VMM overhead p{p}", "MiB", pct(results["triad"]["overhead"], p),
             pct(results["qemu"]["overhead"], p))
    t_boot = pct(results["triad"]["boot"], 50) / pct(results["qemu"]["boot"], 50)
    t_over = pct(results["triad"]["overhead"], 50)
    print(f"targets: boot ratio <= 0.5: {'met' if t_boot <= 0.5 else 'NOT met'} ({t_boot:.2f}); "
          f"overhead <= 5 MiB: {'met' if t_over <= 5 else 'NOT met'} ({t_over:.2f} MiB)")


if __name__ == "__main__":
    main()
