#!/usr/bin/env python3
"""Where a proxy's CPU time goes, per unit of work, from `perf record -g` samples.

Reads `perf script -F ip,sym` output on stdin and sorts every sample into a bucket: the system
call it was taken in (the kernel frame just above `do_syscall_64`, so a loopback `sendto` includes
delivering the bytes to the receiving socket), a page fault, interrupt work, other kernel time, or
user space. Prints, per bucket, the share of the samples and the CPU time per unit (samples /
frequency / units).

    perf script -i FILE -F ip,sym | benches/profile.py FREQUENCY UNITS SCALE

SCALE turns seconds per unit into the printed figure (1e6: microseconds). Used by
benches/compare.sh with PROFILE=1; prints `bucket share time` lines for it to tabulate.
"""
import collections
import re
import sys

PREFIXES = re.compile(r"^(__x64_sys_|__ia32_sys_|__se_sys_|__do_sys_|ksys_|__sys_|do_sys_|do_)")


def bucket(frames):
    """frames: symbols, leaf first."""
    if not frames or frames[0][0] < 0xFFFF800000000000:
        return "user"
    names = [name for _, name in frames]
    if "do_syscall_64" in names:
        i = names.index("do_syscall_64")
        # The frame leafward of do_syscall_64 names the call (x64_sys_call is the dispatcher).
        below = [n for n in names[:i] if n != "x64_sys_call"]
        if not below:
            return "syscall entry and exit"
        if below[-1] in ("exit_to_user_mode_loop", "syscall_exit_to_user_mode"):
            # On the way back to user space: mostly giving the CPU to another task.
            return "syscall return (rescheduling)"
        return "syscall " + PREFIXES.sub("", below[-1])
    if any("page_fault" in n for n in names):
        return "page faults"
    if any(n in ("handle_softirqs", "__do_softirq", "net_rx_action", "irq_exit_rcu") for n in names):
        return "interrupts (softirq)"
    return "kernel, other"


def main():
    freq, units, scale = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    counts = collections.Counter()
    frames = []
    for line in list(sys.stdin) + [""]:
        line = line.strip()
        if not line:
            if frames:
                counts[bucket(frames)] += 1
            frames = []
            continue
        parts = line.split(None, 1)
        try:
            ip = int(parts[0], 16)
        except ValueError:
            continue  # the sample's header line (command name)
        frames.append((ip, parts[1] if len(parts) > 1 else "?"))
    total = sum(counts.values())
    if not total or not units:
        return
    for name, n in counts.most_common():
        print(f"{name}\t{n / total:.4f}\t{n / freq * scale / units:.4f}")


if __name__ == "__main__":
    main()
