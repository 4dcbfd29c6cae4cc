"""Shared fixtures: offline mode, a per-session cache of tiny real-architecture VLMs, small images.

The offline variables are set at import time, before any test module imports ``transformers`` or
``datasets``, so nothing ever reaches for the hub.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

# The tiny models gain nothing from intra-op threads, and on a shared, busy CPU the threads' spin-waits make
# each small matmul ~1000x slower (10 ms instead of 10 us).
torch.set_num_threads(1)

FAMILIES = ["llava", "qwen2_vl"]


@pytest.fixture(scope="session", autouse=True)
def vlmdpo_cache(tmp_path_factory):
    """Build tiny models into a fresh session folder, never into the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("vlmdpo_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLMDPO_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="session")
def end_of_turn(family):
    """The token the tiny model's chat template closes an assistant turn with."""
    return {"llava": "</s>", "qwen2_vl": "<|im_end|>"}[family]


@pytest.fixture(scope="session")
def tiny_model_dir(family, vlmdpo_cache):
    """Folder of the tiny model of ``family``, loadable with ``from_pretrained`` (built once a session)."""
    from vlmdpo.tiny.models import tiny_vlm

    return tiny_vlm(family)


@pytest.fixture(scope="session")
def tiny_model_and_processor(tiny_model_dir):
    """``(model, processor)`` loaded from ``tiny_model_dir`` in float32; tests must not modify the model."""
    from vlmdpo.model.load import load_model_and_processor

    model, processor = load_model_and_processor(tiny_model_dir)
    model.requires_grad_(False)
    return model.eval(), processor


@pytest.fixture(scope="session")
def images():
    """Small RGB images of different sizes and colours (Qwen2-VL gives them different token counts)."""
    return {
        "square": Image.new("RGB", (32, 32), (200, 30, 30)),
        "wide": Image.new("RGB", (64, 32), (30, 200, 30)),
        "tall": Image.new("RGB", (24, 48), (30, 30, 200)),
        "tiny": Image.new("RGB", (16, 16), (220, 220, 40)),
    }


def pytest_addoption(parser):
    parser.addoption("--reverse-order", action="store_true",
                     help="run the collected tests in reverse order (with -p no:randomly), to catch tests that "
                          "depend on what ran before them")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse-order"):
        items.reverse()
