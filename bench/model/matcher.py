"""Matcher benchmark: 1,000,000 exact + 100,000 wildcard rules.

Reports build time, lookup cost per already-normalised name (exact hits, wildcard hits at
depth 1 and 3, misses, each a fresh string as a parser hands it over), and resident memory
added by the rule set.  The lookups are timed twice: on the matcher as built, and on one that
1,000 small changes (one exact rule added each) made since, whose overlay every probe also
asks; then the cost of one such change, and of a change that folds the overlay into new dicts.
usage: python bench/model/matcher.py [EXACT] [WILDCARDS]
"""

from __future__ import annotations

import gc
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable

from sipzone.model.matcher import OVERLAY_LIMIT
from sipzone.model.snapshot import Snapshot
from sipzone.model.tenancy import PROVIDER, TenancyTree, Tenant


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    n_exact = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    n_wild = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    tenants = TenancyTree([Tenant(f"reseller{i}", PROVIDER) for i in range(100)])
    owners = [f"reseller{i}" for i in range(100)]
    gc.collect()
    base_rss = rss_mb()
    rules = [(f"customer{i}.example.com", owners[i % 100]) for i in range(n_exact)]
    rules += [(f"*.teams{i}.example.net", owners[i % 100]) for i in range(n_wild)]
    t0 = time.perf_counter()
    snap = Snapshot.build(1, tenants, rules)
    build_s = time.perf_counter() - t0
    del rules
    gc.collect()
    rss = rss_mb() - base_rss

    def sample(rng: random.Random) -> dict[str, list[str]]:
        return {
            "exact hit": [f"customer{rng.randrange(n_exact)}.example.com" for _ in range(100_000)],
            "wildcard hit, 1 deep": [
                f"cust{rng.randrange(10**6)}.teams{rng.randrange(n_wild)}.example.net"
                for _ in range(100_000)
            ],
            "wildcard hit, 3 deep": [
                f"a.b.cust{rng.randrange(10**6)}.teams{rng.randrange(n_wild)}.example.net"
                for _ in range(100_000)
            ],
            "miss": [f"nobody{rng.randrange(10**6)}.example.org" for _ in range(100_000)],
        }

    kinds = sample(random.Random(7))
    owner = snap.matcher.owner
    for name in kinds["exact hit"][:10] + kinds["wildcard hit, 1 deep"][:10]:
        assert owner(name) is not None
    for name in kinds["miss"][:10]:
        assert owner(name) is None

    clock = time.perf_counter_ns
    overhead = statistics.median(-clock() + clock() for _ in range(10_000))

    def per_name_ns(names: list[str], lookup: Callable[[str], object] = owner) -> list[float]:
        """Each name timed alone, the clock's own cost subtracted.  As in the servers, the name
        is a fresh string just made (hot in cache, its hash not yet computed), not one of a
        100,000-string list scattered over the heap."""
        out = []
        for name in names:
            fresh = name.encode().decode()
            t = clock()
            lookup(fresh)
            out.append(clock() - t - overhead)
        return out

    mixed = [n for group in zip(*kinds.values(), strict=True) for n in group]
    print(f"rules: {n_exact:,} exact + {n_wild:,} wildcard")
    print(f"build: {build_s:.2f} s   memory added: {rss:.0f} MB")
    print(f"(clock overhead subtracted: {overhead:.0f} ns)")
    print("| lookup (already-normalised name) | median ns/name | p95 ns/name |")
    print("|---|---|---|")
    rows: list[tuple[str, list[str], Callable[[str], object]]] = [
        *((label, names, owner) for label, names in kinds.items()),
        ("mix of the four", mixed, owner),
        # The floor on this machine: one probe of the million-name dict, nothing else.
        ("floor: one exact-dict probe (exact hits)", kinds["exact hit"], snap.matcher.exact_owner),
    ]
    for label, names, lookup in rows:
        samples = sorted(per_name_ns(names, lookup))
        p95 = samples[int(len(samples) * 0.95)]
        print(f"| {label} | {statistics.median(samples):.0f} | {p95:.0f} |")

    # 1,000 changes of one rule each, as the store feed applies them, each timed.
    changed = snap.matcher
    change_ms = []
    for i in range(1000):
        t = time.perf_counter()
        changed = changed.with_changes(
            added=[(f"new{i}.example.com", changed.owner(kinds["exact hit"][i]))]
        )
        change_ms.append((time.perf_counter() - t) * 1000)
    change_ms.sort()
    print(
        f"one-rule change (1,000 in a row): median {statistics.median(change_ms):.3f} ms, "
        f"p99 {change_ms[int(len(change_ms) * 0.99)]:.3f} ms, max {change_ms[-1]:.3f} ms"
    )
    t = time.perf_counter()
    changed.with_changes(
        added=[("fold.example.com", changed.owner("new0.example.com"))], overlay_limit=0
    )
    print(
        f"a change that folds the overlay (once per {OVERLAY_LIMIT:,}): "
        f"{(time.perf_counter() - t) * 1000:.0f} ms"
    )
    print("| lookup after 1,000 changes | median ns/name | p95 ns/name |")
    print("|---|---|---|")
    # Other names than above: names looked up before would find their entries in cache.
    kinds = sample(random.Random(8))
    mixed = [n for group in zip(*kinds.values(), strict=True) for n in group]
    for label, names in [*kinds.items(), ("mix of the four", mixed)]:
        samples = sorted(per_name_ns(names, changed.owner))
        p95 = samples[int(len(samples) * 0.95)]
        print(f"| {label} | {statistics.median(samples):.0f} | {p95:.0f} |")


if __name__ == "__main__":
    main()
