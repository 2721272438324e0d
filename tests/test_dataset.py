"""ms-swift records -> Samples -> batches: tags, bad records, the encoder protocol, the cache, plugins."""

import json
import types

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from photon.core import plugins
from photon.core.errors import PhotonError
from photon.core.hookspecs import hookimpl
from photon.core.its import instruction_mask
from photon.modalities.base import Media
from photon.modalities.dataset import PhotonDataset, RecordError, Sample, normalise_messages, parse_record
from tests.make_media import AFFINE_DIRECTIONS, phantom, write_image

VISION_START, VISION_END, IM_START, IM_END, PAD = 1, 2, 3, 4, 0
SMALL_CT = {"ct": {"size": [8, 16, 16], "crop": None}}


class CharEncoder:
    """A stand-in for a backbone's encoder: one token per character, four tokens per media item.

    Labels are the assistant tokens only; the instruction mask is the core's rule (text after
    a vision-end token up to the next im-end)."""

    def encode(self, sample: Sample, *, train: bool) -> dict[str, torch.Tensor]:
        ids, labels = [], []
        media = iter(sample.media)
        for message in sample.messages:
            pieces = []
            for n, text in enumerate(message["content"].split("<")):
                if n:
                    tag, _, text = text.partition(">")
                    next(media)
                    pieces += [VISION_START, 9, 9, VISION_END]
                pieces += [ord(c) for c in text]
            tokens = [IM_START] + pieces + [IM_END]
            ids += tokens
            labels += tokens if message["role"] == "assistant" and train else [-100] * len(tokens)
        ids = torch.tensor(ids)
        return {"input_ids": ids, "labels": torch.tensor(labels),
                "instruction_mask": instruction_mask(ids[None], VISION_END, IM_END)[0]}

    def collate(self, encoded):
        width = max(len(e["input_ids"]) for e in encoded)
        pad = {"input_ids": PAD, "labels": -100, "instruction_mask": False}
        return {key: torch.stack([torch.nn.functional.pad(e[key], (width - len(e[key]), 0), value=value) for e in encoded])
                for key, value in pad.items()}


@pytest.fixture()
def files(tmp_path):
    write_image(tmp_path / "a.png")
    nib.save(phantom(AFFINE_DIRECTIONS["LPS"], spacing=4.0), tmp_path / "ct.nii.gz")
    return tmp_path


def _write_jsonl(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_missing_tags_are_inserted_like_ms_swift_and_too_many_are_errors():
    record = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is shown?"},
                           {"role": "assistant", "content": "A lung."}],
              "images": ["a.png", "b.png"], "videos": ["ct.nii.gz"]}
    messages = normalise_messages(record)
    assert messages[1]["content"] == "<video><image><image>What is shown?"  # images first, then videos in front
    assert messages[0]["content"] == "Be brief." and record["messages"][1]["content"] == "What is shown?"
    with pytest.raises(RecordError, match="2 <image> tags but 1 images"):
        normalise_messages({"messages": [{"role": "user", "content": "<image><image>x"}], "images": ["a.png"]})


def test_tags_consume_media_in_order(files):
    record = {"id": "r1", "messages": [{"role": "user", "content": "<video>then<image>"}, {"role": "assistant", "content": "ok"}],
              "images": ["a.png"], "videos": ["ct.nii.gz"]}
    entry = parse_record(record, "here:1", files)
    assert [(key, path.name) for key, path in entry.media] == [("videos", "ct.nii.gz"), ("images", "a.png")]


def test_bad_records_are_reported_with_file_line_and_id_then_skipped(files, capsys):
    good = {"id": "good", "benchmark": "slake", "messages": [{"role": "user", "content": "<image>Organ?"},
                                                            {"role": "assistant", "content": "Liver"}],
            "images": ["a.png"], "meta": {"qid": 7}}
    records = _write_jsonl(files / "records.jsonl", [
        good,
        "{not json",
        {"id": "tags", "messages": [{"role": "user", "content": "<image><image>?"}], "images": ["a.png"]},
        {"id": "missing", "messages": [{"role": "user", "content": "?"}], "videos": ["nowhere.nii.gz"]},
        {"id": "good", "messages": [{"role": "user", "content": "again"}]},
        {"id": "roles", "messages": [{"role": "robot", "content": "?"}]},
    ])
    dataset = PhotonDataset(records)
    err = capsys.readouterr().err
    assert len(dataset) == 1 and len(dataset.problems) == 5
    assert f"{records}:2: record ?: not valid JSON" in err
    assert f"{records}:3: record tags: 2 <image> tags but 1 images" in err
    assert f"{records}:4: record missing: missing media path {files / 'nowhere.nii.gz'}" in err
    assert f"{records}:5: record good: duplicate id (first at {records}:1)" in err
    assert f"{records}:6: record roles: messages[0] must be" in err
    sample = dataset[0]
    assert sample.id == "good" and sample.benchmark == "slake" and sample.meta == {"qid": 7}
    assert sample.media[0].kind == "image" and sample.media[0].frames.shape[1] == 3
    assert dataset.summary() == "1 records usable, 5 skipped"
    with pytest.raises(PhotonError, match=r"records.jsonl:2: record \?: not valid JSON .*strict"):
        PhotonDataset(records, strict=True)


def test_batches_carry_assistant_labels_and_the_instruction_mask(files):
    records = [
        {"id": "ct", "messages": [{"role": "user", "content": "<video>Nodule?"}, {"role": "assistant", "content": "No"}],
         "videos": [str(files / "ct.nii.gz")]},
        {"id": "img", "messages": [{"role": "system", "content": "Hi"}, {"role": "user", "content": "Which organ is it?"},
                                   {"role": "assistant", "content": "Liver"}], "images": [str(files / "a.png")]},
    ]
    dataset = PhotonDataset(records, encoder=CharEncoder(), media_options=SMALL_CT)
    batch = next(iter(DataLoader(dataset, batch_size=2, collate_fn=dataset.collate)))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["instruction_mask"].shape
    for row, answer, question in zip(range(2), ("No", "Liver"), ("Nodule?", "Which organ is it?")):
        ids, labels, mask = batch["input_ids"][row], batch["labels"][row], batch["instruction_mask"][row]
        labelled = "".join(chr(t) for t in labels[labels >= 32].tolist())
        assert labelled == answer and (labels[labels != -100] == ids[labels != -100]).all()
        assert "".join(chr(t) for t in ids[mask].tolist()) == question


def test_media_that_fail_to_load_are_skipped_once_and_dropped_from_batches(files, capsys):
    (files / "broken.png").write_bytes(b"\x89PNG broken")
    records = [{"id": "ok", "messages": [{"role": "user", "content": "<image>?"}], "images": [str(files / "a.png")]},
               {"id": "bad", "messages": [{"role": "user", "content": "<image>?"}], "images": [str(files / "broken.png")]}]
    dataset = PhotonDataset(records)
    assert dataset[1] is None and dataset[1] is None
    assert capsys.readouterr().err.count("record bad: ") == 1
    assert [s.id for s in dataset.collate([dataset[0], dataset[1]])] == ["ok"]
    assert list(s.id for s in dataset.samples(progress=False)) == ["ok"]
    assert "1 records usable, 1 skipped" in capsys.readouterr().err
    with pytest.raises(PhotonError, match="broken.png"):
        PhotonDataset(records, strict=True)[1]


def test_cache_reuses_preprocessed_volumes_until_the_file_or_options_change(files):
    records = [{"id": "ct", "messages": [{"role": "user", "content": "<video>?"}], "videos": [str(files / "ct.nii.gz")]}]
    cache = files / "cache"
    first = PhotonDataset(records, cache_dir=cache, media_options=SMALL_CT)
    fresh = first[0].media[0]
    assert (first.cache.hits, first.cache.misses) == (0, 1) and len(list(cache.glob("*.npy"))) == 1
    again = PhotonDataset(records, cache_dir=cache, media_options=SMALL_CT)
    cached = again[0].media[0]
    assert (again.cache.hits, again.cache.misses) == (1, 0)
    np.testing.assert_allclose(cached.frames, fresh.frames, atol=1e-3)  # stored as float16
    assert cached.meta["axcodes"] == fresh.meta["axcodes"] and cached.fps == 1.0
    other = PhotonDataset(records, cache_dir=cache, media_options={"ct": {"size": [8, 8, 8], "crop": None}})
    assert other[0].media[0].frames.shape == (8, 1, 8, 8) and other.cache.misses == 1
    nib.save(phantom(AFFINE_DIRECTIONS["LPS"], spacing=5.0), files / "ct.nii.gz")
    changed = PhotonDataset(records, cache_dir=cache, media_options=SMALL_CT)
    changed[0]
    assert changed.cache.misses == 1


def test_a_plugin_adds_a_file_format_through_choose_modality(tmp_path):
    (tmp_path / "x.fake").write_text("3")

    def load_fake(path, **options):
        return Media(frames=np.full((int(path.read_text()), 1, 4, 4), 0.5, dtype=np.float32), kind="volume", source=str(path))

    plugin = types.SimpleNamespace(
        register_modalities=hookimpl(lambda register: register("fake", load_fake)),
        choose_modality=hookimpl(lambda path, kind: "fake" if str(path).endswith(".fake") else None),
    )
    plugins.pm.register(plugin, name="fake-format")
    try:
        records = [{"id": "f", "messages": [{"role": "user", "content": "?"}], "videos": [str(tmp_path / "x.fake")]}]
        sample = PhotonDataset(records)[0]
        assert sample.media[0].frames.shape == (3, 1, 4, 4)
        assert sample.messages[0]["content"] == "<video>?"
    finally:
        plugins.pm.unregister(name="fake-format")
