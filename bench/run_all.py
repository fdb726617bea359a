"""`make bench`: run every benchmark and write its output into docs/benchmarks.md between its markers.

Each section of docs/benchmarks.md between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` is replaced
by the latest run's output (machine, command, date, tables); the prose around it stays.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys

BENCHES = {
    "store": ["bench.store_bench"],
    "extract": ["bench.extract_bench"],
    "train": ["bench.train_bench", "--crop-samples", "250000", "--batch-size", "2", "--steps", "5", "--workers", "0"],
    "scale": ["bench.scale_bench"],
    "compact": ["bench.compact_bench"],
    "crop": ["bench.crop_context"],
    "designs": ["bench.designs_bench"],
    "recipe": ["bench.recipe_ab"],
}
DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks.md")


def run(name: str, argv: list[str]) -> str:
    print(f"running {name}: python -m {' '.join(argv)}", file=sys.stderr, flush=True)
    out = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, check=True).stdout
    return f"date: {datetime.date.today().isoformat()}\n" + out.strip()


def main() -> None:
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(f"usage: python -m bench.run_all [{' '.join(BENCHES)}]\n{__doc__.strip()}")
        return
    only = sys.argv[1:] or list(BENCHES)
    unknown = [n for n in only if n not in BENCHES]
    if unknown:
        sys.exit(f"bench.run_all: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    text = open(DOC).read()
    for name in only:
        body = run(name, BENCHES[name])
        pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(\n<!-- /bench:{name} -->)", re.S)
        if not pattern.search(text):
            text += f"\n<!-- bench:{name} -->\n<!-- /bench:{name} -->\n"
        text = pattern.sub(lambda m, body=body: m.group(1) + "```\n" + body + "\n```" + m.group(2), text)
        with open(DOC, "w") as f:
            f.write(text)
    print(f"wrote {os.path.normpath(DOC)}", file=sys.stderr)


if __name__ == "__main__":
    main()
