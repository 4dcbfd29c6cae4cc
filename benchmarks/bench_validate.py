"""How fast the up-front data check runs, with one process and with several.

    python benchmarks/bench_validate.py --rows 2000 --image-size 336 --workers 1 2

Writes ``--rows`` pairs (a PNG of ``--image-size`` pixels a side each, every tenth row broken) into a temporary
folder, then times ``vlmdpo.data.validate.validate_rows`` with the tiny model's processor for each worker count and
prints rows per second and the speed-up over one worker. Same bad rows found with every worker count is checked.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.config import load_config
from vlmdpo.model.load import load_processor, resolve_model_path
from vlmdpo.train.run_data import load_pairs
from vlmdpo.data.validate import validate_rows


def write_rows(folder: Path, rows: int, size: int) -> Path:
    generator = np.random.default_rng(0)
    lines = []
    for i in range(rows):
        name = f"{i}.png"
        if i % 10 == 9:
            (folder / name).write_bytes(b"broken")
        else:
            Image.fromarray(generator.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / name)
        lines.append(json.dumps({"images": [name], "prompt": f"describe image {i}.", "chosen": "a cat on a mat.",
                                 "rejected": "a dog on a log."}))
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=336)
    parser.add_argument("--model", default="tiny:qwen2_vl")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_rows(Path(tmp), args.rows, args.image_size)
        config = load_config(None, [f"model.name_or_path={args.model}", f"data.train={path}"])
        pairs = load_pairs(config)
        collator = PreferenceCollator(load_processor(resolve_model_path(args.model)), max_response_length=256)
        results = {}
        for workers in args.workers:
            start = time.perf_counter()
            report = validate_rows(pairs, collator, limit=None, workers=workers, progress=False)
            results[workers] = (time.perf_counter() - start, report)
        first = results[args.workers[0]]
        for workers, (seconds, report) in results.items():
            assert report.bad == first[1].bad, "worker counts disagree"
            print(f"workers={workers}: {args.rows} rows in {seconds:.1f} s = {args.rows / seconds:.0f} rows/s, "
                  f"speed-up {first[0] / seconds:.2f}x; {len(report.bad)} bad")


if __name__ == "__main__":
    main()
