"""Records -> loaders -> the real Qwen2.5-VL / Qwen3-VL encoder -> a forward pass of the tiny offline backbone."""

import json

import nibabel as nib
import pytest
import torch
from torch.utils.data import DataLoader

from photon.adapters.qwen_inputs import model_inputs
from photon.cli import main
from photon.core import plugins
from photon.modalities.config import options_for_backbone
from photon.modalities.dataset import PhotonDataset
from tests.make_media import AFFINE_DIRECTIONS, phantom, write_image, write_mp4


@pytest.mark.parametrize("name", ["qwen2.5-vl-tiny", "qwen3-vl-tiny"])
def test_records_reach_the_tiny_backbone_with_the_token_counts_inspect_reports(name, tmp_path, capsys):
    nib.save(phantom(AFFINE_DIRECTIONS["LAS"], spacing=4.0), tmp_path / "ct.nii.gz")
    write_image(tmp_path / "a.png")
    write_mp4(tmp_path / "clip.mp4")
    records = tmp_path / "records.jsonl"
    records.write_text("\n".join(json.dumps(r) for r in [
        {"id": "ct", "messages": [{"role": "user", "content": "<video>Is there a nodule?"}, {"role": "assistant", "content": "No"}],
         "videos": ["ct.nii.gz"]},
        {"id": "image", "messages": [{"role": "user", "content": "Which organ?"}, {"role": "assistant", "content": "Liver"}],
         "images": ["a.png"]},
        {"id": "video", "messages": [{"role": "user", "content": "What happens?"}, {"role": "assistant", "content": "B"}],
         "videos": ["clip.mp4"]},
    ]))
    spec = plugins.backbones()[name].obj
    loaded = spec.load()
    dataset = PhotonDataset(records, encoder=loaded.encoder, media_options=options_for_backbone(spec))
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=dataset.collate)))

    tokenizer = loaded.encoder.tokenizer
    for row, (answer, question) in enumerate([("No", "Is there a nodule?"), ("Liver", "Which organ?"), ("B", "What happens?")]):
        labels = batch["labels"][row]
        assert tokenizer.decode(labels[labels != -100]) == answer + "<|im_end|>"
        assert tokenizer.decode(batch["input_ids"][row][batch["instruction_mask"][row]]) == question

    for row, path in enumerate(["ct.nii.gz", "a.png", "clip.mp4"]):
        assert main(["inspect", str(tmp_path / path), "--json"]) == 0
        reported = next(r for r in json.loads(capsys.readouterr().out)["backbones"] if r["backbone"] == name)
        placeholders = int((batch["mm_token_type_ids"][row] > 0).sum())
        assert placeholders == reported["visual_tokens"], path

    inputs = model_inputs(batch)
    with torch.no_grad():
        loss = loaded.model(**inputs).loss
        logits = loaded.model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    # The loss is the mean next-token cross-entropy over exactly the answer tokens.
    labels = batch["labels"]
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                                               ignore_index=-100)
    torch.testing.assert_close(loss, manual, rtol=1e-5, atol=1e-5)
