"""Build the shapes-world dataset and save it: python -m data_recipes.shapes --out DIR."""

from __future__ import annotations

import argparse
from collections import Counter

from .build import build_shapes_dataset


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, build the `DatasetDict`, `save_to_disk` it and print a summary."""
    parser = argparse.ArgumentParser(prog="python -m data_recipes.shapes", description=__doc__)
    parser.add_argument("--out", required=True, help="directory for DatasetDict.save_to_disk")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--noisy-background-fraction", type=float, default=0.3, help="share of noisy-background images")
    args = parser.parse_args(argv)

    dataset = build_shapes_dataset(
        seed=args.seed,
        num_train=args.num_train,
        num_test=args.num_test,
        image_size=args.image_size,
        noisy_background_fraction=args.noisy_background_fraction,
    )
    dataset.save_to_disk(args.out)
    for split, rows in dataset.items():
        counts = Counter(len(objects) for objects in rows["objects"])
        backgrounds = Counter(rows["background"])
        print(
            f"{split}: {len(rows)} rows, objects per image {dict(sorted(counts.items()))}, "
            f"backgrounds {dict(sorted(backgrounds.items()))}"
        )
        if len(rows):
            print(f"  e.g. caption:       {rows[0]['caption']}")
            print(f"       noisy caption: {rows[0]['noisy_caption']}")
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
