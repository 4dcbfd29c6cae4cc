"""Video rows: a ``videos`` column read as frames (folder, file or list), placed by ``{"type": "video"}`` blocks or
``<video>``, through each video family's own processor, on the same checks as the image matrix.

Per video family (``vlmdpo.tiny.support.VIDEO_FAMILIES``), float32, one batch mixing a video row, an image-and-video
row, a text-only row and a video row with a system message: completion masks cover exactly the response text;
video tokens count their frames; each row alone equals the row in the batch (1e-5); the fast path equals the plain
path (log-probs 1e-5, LoRA gradients on language and vision 1e-4); LoRA steps change only LoRA weights and batched
generation equals one row at a time.
"""

import copy

import numpy as np
import pytest
import torch
from helpers import assert_masks_cover_exactly_the_responses, randomize_lora
from PIL import Image

from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.data.rows import DataError, normalize_row
from vlmdpo.data.videos import frame_indices, load_video
from vlmdpo.eval.generation import generate_responses
from vlmdpo.forward.fast import fast_completion_logps, fast_path_problem
from vlmdpo.forward.logps import completion_logps
from vlmdpo.model.load import load_model_and_processor
from vlmdpo.model.lora import apply_lora
from vlmdpo.tiny.models import tiny_vlm
from vlmdpo.tiny.support import TESTED_FAMILIES, VIDEO_FAMILIES


def clip(frames: int, red: int) -> list[Image.Image]:
    """A clip whose frames differ (a bar moving down), so frame order and sampling show in the pixels."""
    out = []
    for i in range(frames):
        array = np.full((32, 40, 3), (red, 40, 90), dtype=np.uint8)
        array[4 * i: 4 * i + 4] = 255
        out.append(Image.fromarray(array))
    return out


def video_rows(frames: int = 4) -> list[dict]:
    photo = Image.new("RGB", (32, 32), (30, 160, 30))
    raw = [
        {"videos": [clip(frames, 200)], "prompt": "what happens in the video?", "chosen": "a white bar moves down.",
         "rejected": "a cat jumps."},
        {"images": [photo], "videos": [clip(frames, 20)], "prompt": "is the <image> in the <video>? answer yes or no.",
         "chosen": "no.", "rejected": "yes, it is."},
        {"prompt": "is there a dog?", "chosen": "no.", "rejected": "yes, a big dog."},
        {"videos": [clip(frames, 120)], "prompt": [
            {"role": "system", "content": [{"type": "text", "text": "answer briefly."}]},
            {"role": "user", "content": [{"type": "text", "text": "which way does the bar move?"}, {"type": "video"}]}],
         "chosen": "down.", "rejected": "up and left."},
    ]
    # a frame rate, so every family's processor also reads the frames' metadata (Qwen3-VL's timestamps)
    return [{**normalize_row(row, index, video_fps=4.0), "index": index} for index, row in enumerate(raw)]


@pytest.fixture(scope="module", params=VIDEO_FAMILIES)
def built(request, vlmdpo_cache):
    model, processor = load_model_and_processor(tiny_vlm(request.param))
    model.requires_grad_(False)
    return request.param, model.eval(), processor


def video_token_count(processor, ids: torch.Tensor) -> int:
    return int((ids == processor.tokenizer.convert_tokens_to_ids(processor.video_token)).sum())


def test_completion_mask_covers_exactly_the_response_text(built):
    family, _, processor = built
    rows = video_rows()
    batch = PreferenceCollator(processor)(rows)
    assert_masks_cover_exactly_the_responses(processor, batch, rows, family)
    assert video_token_count(processor, batch["prompt_input_ids"][2]) == 0  # the text-only row
    assert all(video_token_count(processor, batch["prompt_input_ids"][i]) > 0 for i in (0, 1, 3))


def test_video_tokens_count_their_frames(built):
    """Twice the frames, twice the video tokens (LLaVA-OneVision adds one newline token per video), and the prompt
    length the up-front check reads counts them all (Qwen3-VL adds a timestamp and markers per frame pair)."""
    family, _, processor = built
    collator = PreferenceCollator(processor)
    short, long = video_rows(4)[0], video_rows(8)[0]
    tokens = [video_token_count(processor, collator.encode_prompts([row])["input_ids"][0]) for row in (short, long)]
    assert tokens[1] > tokens[0] > 0 and 2 * tokens[0] - tokens[1] in (0, 1), (family, tokens)  # OneVision: +1 newline
    assert collator.prompt_length(long) - collator.prompt_length(short) >= tokens[1] - tokens[0], family


def test_each_row_alone_equals_the_row_in_the_batch(built):
    family, model, processor = built
    rows, collator, pad = video_rows(), PreferenceCollator(processor), processor.tokenizer.pad_token_id
    together = completion_logps(model, collator(rows), pad)
    for i, row in enumerate(rows):
        alone = completion_logps(model, collator([row]), pad)
        for key in ("chosen_logps", "rejected_logps"):
            torch.testing.assert_close(alone[key][0], together[key][i], rtol=1e-5, atol=1e-5, msg=f"{family} {key}")


@pytest.mark.parametrize("parts", [("language",), ("language", "vision")])
def test_fast_path_equals_plain(built, parts):
    family, model, processor = built
    policy = randomize_lora(apply_lora(copy.deepcopy(model), r=4, alpha=8, parts=parts), seed=1)
    batch = PreferenceCollator(processor)(video_rows())
    assert fast_path_problem(policy, batch) is None
    lora = [p for n, p in policy.named_parameters() if "lora_" in n]
    for p in lora:
        p.requires_grad_(True)
    plain = completion_logps(policy, batch, processor.tokenizer.pad_token_id)
    fast = fast_completion_logps(policy, batch)
    for key in ("chosen_logps", "rejected_logps"):
        torch.testing.assert_close(fast[key], plain[key], rtol=1e-5, atol=1e-5, msg=family)
    # allow_unused: SigLIP's pooling head (LLaVA-OneVision) has LoRA but its output is not among the features
    grads = [[torch.zeros_like(p) if g is None else g for p, g in zip(lora, torch.autograd.grad(
        (out["chosen_logps"] - out["rejected_logps"]).sum(), lora, allow_unused=True))] for out in (fast, plain)]
    names = [n for n, _ in policy.named_parameters() if "lora_" in n]
    vision = [g for n, g in zip(names, grads[1]) if "visual" in n or "vision" in n]
    assert not vision or any(g.abs().sum() > 0 for g in vision), f"{family}: no gradient reached the vision LoRA"
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4, msg=family)


def test_lora_steps_and_batched_generation(built):
    from vlmdpo.config import LossConfig
    from vlmdpo.train.step import dpo_step

    family, model, processor = built
    with torch.random.fork_rng(devices=[]):  # peft draws lora_A from the global RNG: the same adapter in any order
        torch.manual_seed(0)
        policy = apply_lora(copy.deepcopy(model), r=4, alpha=8, parts=("language",))
    base = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" not in n}
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    batch = PreferenceCollator(processor)(video_rows())
    policy.train()
    for _ in range(2):
        loss, _ = dpo_step(policy, None, batch, LossConfig(), pad_token_id=processor.tokenizer.pad_token_id,
                           forward_path="plain")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    policy.eval()
    assert all(torch.equal(p, base[n]) for n, p in policy.named_parameters() if n in base), family
    assert any(p.grad is None and p.abs().sum() > 0 for n, p in policy.named_parameters() if "lora_B" in n)
    rows = video_rows()
    together = generate_responses(policy, processor, rows, max_new_tokens=5, batch_size=len(rows), progress=False)
    alone = [generate_responses(policy, processor, [row], max_new_tokens=5, progress=False)[0] for row in rows]
    assert together == alone, family


def test_videos_of_8_and_4_frames_beside_an_image_row(built):
    """The issue's batch: an 8-frame video, a 4-frame video and an image row. Processors that keep each video's own
    length (Qwen) take it as it is; those that stack videos (LLaVA-OneVision, LLaVA-NeXT-Video) refuse it naming
    data.video_frames, which makes the lengths equal."""
    family, model, processor = built
    image_row = {**normalize_row({"images": [clip(1, 70)[0]], "prompt": "what colour is it?", "chosen": "teal.",
                                  "rejected": "red."}, 5), "index": 5}
    rows = [video_rows(8)[0], {**video_rows(4)[3], "index": 6}, image_row]
    collator, pad = PreferenceCollator(processor), processor.tokenizer.pad_token_id
    if family in ("llava_onevision", "llava_next_video"):
        with pytest.raises(DataError, match=r"videos of \[4, 8\] frames.*set data.video_frames"):
            collator(rows)
        return
    batch = collator(rows)
    plain = completion_logps(model, batch, pad)
    fast = fast_completion_logps(model, batch)
    for key in ("chosen_logps", "rejected_logps"):
        torch.testing.assert_close(fast[key], plain[key], rtol=1e-5, atol=1e-5, msg=family)
        for i, row in enumerate(rows):
            torch.testing.assert_close(completion_logps(model, collator([row]), pad)[key][0], plain[key][i],
                                       rtol=1e-5, atol=1e-5, msg=family)
    for i, row in enumerate(rows):
        covered = processor.tokenizer.decode(batch["chosen_input_ids"][i][batch["chosen_completion_mask"][i].bool()])
        assert covered.lstrip().startswith(row["chosen"][0]["content"][0]["text"]), (family, covered)


@pytest.mark.parametrize("parts, encodings", [(("language",), 1), (("language", "vision"), 2)])
def test_a_step_encodes_each_video_once_when_the_vision_side_is_frozen(built, parts, encodings):
    """The fast path's DPO step: with the vision tower frozen, the policy and the reference (adapter off) share one
    run of it per batch (``shared_image_features``); with vision LoRA each model runs it once."""
    from vlmdpo.config import LossConfig
    from vlmdpo.model.load import hf_model
    from vlmdpo.train.step import dpo_step

    family, model, processor = built
    policy = randomize_lora(apply_lora(copy.deepcopy(model), r=4, alpha=8, parts=parts), seed=1)
    base = hf_model(policy)
    owner = base if "get_video_features" in type(base).__dict__ else base.base_model
    calls = []
    original = owner.get_video_features
    owner.get_video_features = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    batch = PreferenceCollator(processor)(video_rows())
    loss, _ = dpo_step(policy, None, batch, LossConfig(), pad_token_id=processor.tokenizer.pad_token_id,
                       forward_path="fast")
    assert torch.isfinite(loss) and len(calls) == encodings, (family, len(calls))


# --- reading videos ----------------------------------------------------------------------------------------------

def test_frame_indices_are_even_and_exact():
    assert frame_indices(10, None) == list(range(10))
    assert frame_indices(10, 4) == [0, 3, 6, 9]
    assert frame_indices(3, 5) == [0, 0, 1, 2, 2]  # a shorter video repeats frames: one length per batch


def bar_row(frame) -> int:
    return int(np.asarray(frame)[:, 0, 0].argmax()) // 4  # where the white bar is: the frame's number


def test_a_frame_folder_reads_in_natural_order_and_samples(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    for i, frame in enumerate(clip(8, 50)):
        frame.save(folder / f"frame_{i}.png")  # frame_10 would sort before frame_2 by plain name; not here
    (folder / "notes.txt").write_text("not a frame")
    frames, metadata = load_video("clip", str(tmp_path))
    assert [bar_row(f) for f in frames] == list(range(8)) and metadata["fps"] is None
    frames, metadata = load_video("clip", str(tmp_path), frames=3, fps=2)
    assert [bar_row(f) for f in frames] == [0, 4, 7]
    assert metadata == {"total_num_frames": 8, "frames_indices": [0, 4, 7], "fps": 2.0}
    row = normalize_row({"videos": ["clip"], "prompt": "<video> what moves?", "chosen": "a bar.", "rejected": "no."},
                        0, str(tmp_path), video_frames=3)
    assert [bar_row(f) for f in row["videos"][0]] == [0, 4, 7]
    assert row["prompt"][0]["content"] == [{"type": "video"}, {"type": "text", "text": " what moves?"}]


def test_a_video_file_decodes_to_the_same_frames_as_its_folder(tmp_path):
    import av

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 40, 32, "yuv420p"
        for frame in clip(8, 50):
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode())
    frames, metadata = load_video(path, frames=3, fps=30)  # a file's own frame rate wins over the setting
    assert len(frames) == 3 and all(f.size == (40, 32) and f.mode == "RGB" for f in frames)
    assert [bar_row(f) for f in frames] == [0, 4, 7]  # lossy codec: where the bar is survives
    assert metadata == {"total_num_frames": 8, "frames_indices": [0, 4, 7], "fps": 4.0}


def test_qwen3_vl_times_each_frame_pair_from_the_frame_rate(vlmdpo_cache):
    """Frames 0, 2, 5 and 7 of a 2 fps clip: Qwen3-VL merges them in pairs and writes each pair's mean time."""
    _, processor = load_model_and_processor(tiny_vlm("qwen3_vl"))
    row = normalize_row({"videos": [clip(8, 9)], "prompt": "what?", "chosen": "a", "rejected": "b"}, 0,
                        video_frames=4, video_fps=2)
    text = processor.tokenizer.decode(PreferenceCollator(processor).encode_prompts([row])["input_ids"][0])
    assert "<0.5 seconds><|vision_start|>" in text and "<3.0 seconds><|vision_start|>" in text, text


@pytest.mark.parametrize("row, field, kind", [
    ({"videos": ["gone"], "prompt": "p", "chosen": "a", "rejected": "b"}, "videos[0]", "missing_video"),
    ({"videos": ["../x"], "prompt": "p", "chosen": "a", "rejected": "b"}, "videos[0]", "video_outside_root"),
    ({"videos": ["empty"], "prompt": "p", "chosen": "a", "rejected": "b"}, "videos[0]", "no_frames"),
    ({"videos": ["notes.txt"], "prompt": "p", "chosen": "a", "rejected": "b"}, "videos[0]", "not_a_video"),
    ({"videos": [[]], "prompt": "p", "chosen": "a", "rejected": "b"}, "videos[0]", "no_frames"),
    ({"videos": [["f.png"]], "prompt": "<video> <video> p", "chosen": "a", "rejected": "b"}, "prompt",
     "placeholder_mismatch"),
    ({"videos": [["f.png"]], "prompt": [{"role": "user", "content": [{"type": "text", "text": "p"}]}], "chosen": "a",
      "rejected": "b"}, "prompt", "placeholder_mismatch"),
    ({"prompt": "p", "chosen": [{"role": "assistant", "content": [{"type": "video"}]}], "rejected": "b"}, "chosen",
     "video_in_response"),
])
def test_bad_video_rows_name_the_field_and_the_fix(tmp_path, row, field, kind):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    Image.new("RGB", (8, 8)).save(tmp_path / "f.png")
    with pytest.raises(DataError) as err:
        normalize_row(row, 7, str(tmp_path))
    assert (err.value.index, err.value.field, err.value.kind) == (7, field, kind)
    assert "Fix:" in str(err.value)


def test_a_processor_without_video_refuses_video_rows(vlmdpo_cache):
    _, processor = load_model_and_processor(tiny_vlm("llava"))
    with pytest.raises(DataError, match="LlavaProcessor takes no video.*Fix: use a model whose processor has a video"):
        PreferenceCollator(processor)(video_rows()[:1])


def test_videos_of_different_lengths_ask_for_video_frames(vlmdpo_cache):
    assert "llava_onevision" in TESTED_FAMILIES
    _, processor = load_model_and_processor(tiny_vlm("llava_onevision"))
    rows = [video_rows(4)[0], {**video_rows(6)[3], "index": 9}]
    with pytest.raises(DataError, match=r"videos of \[4, 6\] frames.*Fix: set data.video_frames"):
        PreferenceCollator(processor)(rows)


# --- training on published video pairs ---------------------------------------------------------------------------

def hound_corpus(root, pairs: int = 6) -> str:
    """LLaVA-Hound's layout: a jsonl of pairs naming frame folders of JPEGs (``c01_0001.jpeg``...) under a root,
    the videos 3 to 7 frames long."""
    import json

    frames_root = root / "train_300k"
    lines = []
    for i in range(pairs):
        folder = frames_root / f"v_{i}"
        folder.mkdir(parents=True)
        for f, frame in enumerate(clip(3 + i % 5, 40 * i)):
            frame.save(folder / f"c01_{f + 1:04d}.jpeg")
        lines.append({"id": f"v_{i}_q", "video": f"v_{i}", "prompt": f"<video>\nwhere does bar {i} go?",
                      "answer": "down.", "chosen": f"bar {i} moves down.", "rejected": f"bar {i} spins.",
                      "chosen_score": 4.0 + i % 2, "rejected_score": 2.0})
    path = root / "sft_dpo_17k.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def hound_config(tmp_path, *more):
    from vlmdpo.config import load_config

    data = hound_corpus(tmp_path)
    return load_config(None, [f"model.name_or_path={tiny_vlm('qwen2_vl')}", f"data.train={data}",
                              f"data.image_root={tmp_path / 'train_300k'}", f"train.output_dir={tmp_path / 'run'}",
                              "train.batch_size=2", "train.max_steps=2", "train.progress=false",
                              "train.mixed_precision=no", *more])


def test_vlmdpo_train_runs_on_llava_hound_video_pairs(vlmdpo_cache, tmp_path, capsys):
    import json

    from vlmdpo.train.loop import train

    out = train(hound_config(tmp_path, "data.video_frames=4"))
    log = capsys.readouterr().out
    assert "llava_hound" in log and "forward path: fast" in log, log
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2] and all(np.isfinite(m["loss"]) for m in steps)
    assert (out / "adapter_model.safetensors").exists()


def test_the_up_front_check_counts_video_tokens(vlmdpo_cache, tmp_path):
    """Every video row's prompt is over 40 tokens only because of its frames: the check stops the run before step 1."""
    from vlmdpo.train.loop import train
    from vlmdpo.data.validate import BadRowsError

    _, processor = load_model_and_processor(tiny_vlm("qwen2_vl"))
    text_only = normalize_row({"prompt": "<video>\nwhere does bar 5 go?", "videos": [[Image.new("RGB", (4, 4))]],
                               "chosen": "a", "rejected": "b"}, 0)
    assert PreferenceCollator(processor).prompt_length({**text_only, "videos": [], "prompt": [
        {"role": "user", "content": [text_only["prompt"][0]["content"][1]]}]}) < 40
    with pytest.raises(BadRowsError, match=r"6 of 6 checked rows are bad.*First: row 0 \(counted from 0\), field "
                                           r"'prompt': the prompt is \d+ tokens with its image and video tokens, more than "
                                           r"max_prompt_length=40"):
        train(hound_config(tmp_path, "data.video_frames=8", "data.max_prompt_length=40"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_data_inspect_counts_videos_and_convert_writes_their_frames(tmp_path):
    """``vlmdpo data inspect`` counts a row's videos; ``vlmdpo data convert`` to jsonl writes each video as a folder
    of its frames that reads back to the same pixels, and a save_to_disk output refuses video rows by name."""
    from vlmdpo.data.rows import PreferenceDataset, load_preference_dataset
    from vlmdpo.data.tools import convert_dataset, inspect_dataset

    source = hound_corpus(tmp_path)
    root = str(tmp_path / "train_300k")
    report = inspect_dataset(source, image_root=root)
    assert report.videos_per_row == [1] * 6 and "videos per row: 1: 6" in report.summary()
    out, skipped = convert_dataset(source, tmp_path / "converted" / "pairs.jsonl", image_root=root, progress=False)
    assert skipped == []
    original = PreferenceDataset(load_rows_of(source), image_root=root)
    converted = PreferenceDataset(load_preference_dataset(str(out)), image_root=str(out.parent))
    for i in (0, 5):
        assert converted[i]["prompt"] == original[i]["prompt"]
        assert [np.asarray(f).tolist() for f in converted[i]["videos"][0]] == [
            np.asarray(f).tolist() for f in original[i]["videos"][0]]
    with pytest.raises(DataError, match="convert to a .jsonl file instead"):
        convert_dataset(source, tmp_path / "folder", image_root=root, progress=False)


def load_rows_of(source):
    from vlmdpo.data.tools import load_rows

    return load_rows(source)[0]
