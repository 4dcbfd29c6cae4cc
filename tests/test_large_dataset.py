"""A 20k-row RLAIF-V-layout dataset with its images as bytes loads lazily: training its first step takes no
more memory than a 2k-row one (if the images were decoded up front, 20k rows of 64x64 RGB would be ~245 MB),
and ``vlmdpo data inspect`` on it finishes in seconds.

The parquet files are written with row groups of 100 rows, as the hub's parquet conversion of image datasets
has them. ``datasets`` turns a parquet file into its Arrow cache once (as it does after a hub download); that
one-time step is run first, in its own process: its peak grows with the data inside ``datasets`` (measured in
the note), while the training process reads the memory-mapped cache."""

import io
import os
import subprocess
import sys
import time

import datasets
import numpy as np
import pytest
from PIL import Image

PROBE = """
import json, sys
from pathlib import Path
from vlmdpo.config import load_config
from vlmdpo.model.load import load_model_and_processor
from vlmdpo.train.loop import train

def status(key):  # kB
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key + ":"))
    return int(line.split()[1])

model_dir, data, out = sys.argv[1:4]
load_model_and_processor(model_dir)
model_rss = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current RSS
train(load_config(None, [f"model.name_or_path={model_dir}", f"data.train={data}", f"train.output_dir={out}",
                         "train.max_steps=1", "train.batch_size=2", "train.progress=false", "train.mixed_precision=no",
                         "data.validate=sample", "data.validate_sample=64"]))
print(json.dumps({"model_kib": model_rss, "peak_kib": status("VmHWM")}))
"""


def rlaif_v_parquet(path, rows):
    """``rows`` pairs in RLAIF-V's columns, each image 64x64 PNG bytes (64 distinct noise images, cycled)."""
    generator = np.random.default_rng(0)
    encoded = []
    for _ in range(64):
        buffer = io.BytesIO()
        Image.fromarray(generator.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    table = datasets.Dataset.from_dict({
        "ds_name": ["synthetic"] * rows,
        "image": [{"bytes": encoded[i % 64], "path": None} for i in range(rows)],
        "question": [f"What is in picture {i}?" for i in range(rows)],
        "chosen": ["Coloured noise."] * rows, "rejected": [f"A cat number {i}." for i in range(rows)],
        "origin_dataset": ["synthetic"] * rows, "origin_split": ["train"] * rows, "idx": list(range(rows)),
        "image_path": [f"{i}.png" for i in range(rows)],
    }).cast_column("image", datasets.Image())
    table.to_parquet(str(path), batch_size=100)
    return path


def peak_memory(model_dir, data, out, cache):
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    prepare = "import sys; from vlmdpo.data.rows import load_preference_dataset; load_preference_dataset(sys.argv[1])"
    subprocess.run([sys.executable, "-c", prepare, str(data)], env=env, check=True, capture_output=True, timeout=600)
    done = subprocess.run([sys.executable, "-c", PROBE, str(model_dir), str(data), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    import json

    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family", ["llava"], indirect=True)
def test_twenty_thousand_rows_load_lazily_and_inspect_in_seconds(family, tiny_model_dir, tmp_path, capsys):
    small = rlaif_v_parquet(tmp_path / "small.parquet", 2_000)
    large = rlaif_v_parquet(tmp_path / "large.parquet", 20_000)
    assert large.stat().st_size > 5 * small.stat().st_size
    small_run = peak_memory(tiny_model_dir, small, tmp_path / "small_run", tmp_path / "cache_small")
    large_run = peak_memory(tiny_model_dir, large, tmp_path / "large_run", tmp_path / "cache_large")
    above_model = (large_run["peak_kib"] - large_run["model_kib"]) / 1024
    growth = (large_run["peak_kib"] - small_run["peak_kib"]) / 1024
    print(f"20k rows: peak {large_run['peak_kib'] / 1024:.0f} MiB, {above_model:.0f} MiB above the process with "
          f"the model loaded ({large_run['model_kib'] / 1024:.0f} MiB); 2k rows: peak "
          f"{small_run['peak_kib'] / 1024:.0f} MiB; growth from 2k to 20k rows: {growth:.0f} MiB")
    assert growth < 48, growth  # decoding every image would add ~220 MiB
    assert above_model < 400, above_model

    from vlmdpo.data.tools import inspect_dataset

    start = time.perf_counter()
    report = inspect_dataset(str(large), plot=tmp_path / "lengths.png")
    seconds = time.perf_counter() - start
    print(f"vlmdpo data inspect on 20k rows: {seconds:.1f} s")
    assert report.format == "rlaif_v" and report.rows == 20_000 and report.sampled == 2_000
    assert report.sizes[0] == (64, 64) and not report.bad
    assert (tmp_path / "lengths.png").stat().st_size > 10_000
    assert seconds < 30
