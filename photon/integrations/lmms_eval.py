"""Photon as an lmms-eval model: any Photon-wrapped backbone and pruner under lmms-eval's tasks.

    pip install 'photon[lmms-eval]'
    python -m lmms_eval --model photon \\
        --model_args backbone=qwen2.5-vl-3b,keep_ratio=0.25,batch_size=4 --tasks nextqa_mc_test
    python -m lmms_eval --model photon --model_args checkpoint=runs/phase2/checkpoints/latest \\
        --include_path $(python -m photon.integrations.lmms_tasks) --tasks photon_3drad ...

lmms-eval finds the model through the `lmms_eval.models` entry point (pyproject.toml), which
returns a ModelManifest naming PhotonLMMS. Batches of requests go through Photon's own encoder
(ragged batches: each sample keeps its own visual tokens) and greedy decoding; each sample's
kept visual tokens are logged, and written as JSONL when `kept_log=FILE` is given.

model_args (key=value, comma separated): backbone, checkpoint, mode, pruner, keep_ratio, theta,
layer, device, dtype, attn, batch_size, max_new_tokens, kept_log, and media options as
media=ct.size:[140|280|280];video.fps:1 (photon attach's --media with `:` for `=`, `;` between
options and `|` for the commas of a list, since lmms-eval splits model_args on commas).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmms_eval.api.model import lmms

from photon.core.errors import PhotonError

SELECTION_ARGS = ("keep_ratio", "theta", "layer")


def manifest():
    """The `lmms_eval.models` entry point's payload."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="photon", simple_class_path="photon.integrations.lmms_eval.PhotonLMMS")


def _media_overrides(text: str | None) -> dict[str, dict[str, Any]]:
    """media=ct.size:[28|56|56];video.fps:1 -> {"ct": {"size": [28, 56, 56]}, "video": {"fps": 1}}."""
    if not text:
        return {}
    from omegaconf import OmegaConf

    from photon.core.config import load_config
    from photon.modalities.config import DataConfig

    dotlist = [item.replace(":", "=", 1).replace("|", ",") for item in str(text).split(";") if item.strip()]
    load_config(None, dotlist, schema=DataConfig)  # unknown keys and bad values fail here, by name
    return OmegaConf.to_container(OmegaConf.from_dotlist(dotlist))


class PhotonLMMS(lmms):
    is_simple = True

    def __init__(
        self,
        backbone: str | None = None,
        checkpoint: str | None = None,
        mode: str | None = None,
        pruner: str = "photon",
        keep_ratio: float | None = None,
        theta: float | None = None,
        layer: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
        attn: str | None = None,
        batch_size: int | str = 1,
        max_new_tokens: int = 128,
        kept_log: str | None = None,
        media: str | None = None,
        **unknown,
    ) -> None:
        super().__init__()
        import os

        from photon.core.config import check_selection
        from photon.wrapping import media_options, open_model

        unknown = {k: v for k, v in unknown.items() if k not in ("accelerator", "device_map")}
        if unknown:
            raise PhotonError(f"photon (lmms-eval): unknown model_args {', '.join(sorted(unknown))}; see photon.integrations.lmms_eval")
        overrides = {k: v for k, v in (("keep_ratio", keep_ratio), ("theta", theta), ("layer", layer)) if v is not None}
        check_selection(overrides, "model_args")
        self._rank = int(os.environ.get("RANK", "0"))
        self._world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if device in ("auto", "cuda") and self._world_size > 1:
            import torch

            if torch.cuda.is_available():
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        opened = open_model(backbone, checkpoint, mode=mode, overrides=overrides, device=device, dtype=dtype,
                            attn_implementation=attn, pruner=pruner)
        self.loaded = opened.loaded
        for note in opened.resolved.notes:
            import warnings

            warnings.warn(f"photon (lmms-eval): {opened.resolved.given}: {note}", stacklevel=2)
        self.options = media_options(self.loaded, _media_overrides(media))
        self._batch_size = int(batch_size)
        if self._batch_size < 1:
            raise PhotonError(f"photon (lmms-eval): batch_size must be at least 1, got {batch_size}")
        self.max_new_tokens = int(max_new_tokens)
        self.kept_log = Path(kept_log) if kept_log else None
        self.kept: list[dict] = []  # one row per answered sample: task, doc_id, n_visual, n_kept, keep_ratio, theta

    # lmms-eval reads these
    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    # -- requests -> Photon samples ------------------------------------------------------------
    def _media(self, visual: Any, source: str):
        from photon.modalities.base import choose_loader
        from photon.modalities.frames import pil_frames

        if isinstance(visual, (str, Path)):
            name, loader = choose_loader(visual)
            return loader(Path(visual), **self.options.get(name, {}))
        if hasattr(visual, "convert"):  # a PIL image
            return pil_frames([visual], source, **self.options.get("frames", {}))
        raise PhotonError(f"{source}: a visual of type {type(visual).__name__}; expected a file path or a PIL image")

    def _sample(self, context: str, visuals: list, source: str, answer: str | None = None):
        from photon.inference import question_sample
        from photon.modalities.dataset import Sample

        media = [self._media(v, source) for v in self.flatten_visuals(visuals)]
        text = context.replace("<image>", "").replace("<video>", "")
        sample = question_sample(media, text, id=source) if media else Sample(source, [{"role": "user", "content": text}], [])
        if answer is not None:
            sample.messages.append({"role": "assistant", "content": answer})
        return sample

    @staticmethod
    def flatten_visuals(visuals) -> list:
        if visuals is None:
            return []
        if isinstance(visuals, (list, tuple)):
            return [v for item in visuals for v in PhotonLMMS.flatten_visuals(item)] if any(isinstance(v, (list, tuple)) for v in visuals) else list(visuals)
        return [visuals]

    def _doc(self, task: str, split: str, doc_id):
        return self.task_dict[task][split][doc_id]

    # -- the lmms interface ----------------------------------------------------------------------
    def generate_until(self, requests) -> list[str]:
        from tqdm import tqdm

        from photon.inference import generate_batch

        answers: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for n, request in enumerate(requests):  # one generation setting per batch
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(n)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="photon")
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                samples, keys = [], []
                for n in chunk:
                    context, gen_kwargs, doc_to_visual, doc_id, task, split = requests[n].args
                    source = f"{task}/{split}/{doc_id}"
                    samples.append(self._sample(context, doc_to_visual(self._doc(task, split, doc_id)), source))
                    keys.append((task, doc_id))
                gen_kwargs = requests[chunk[0]].args[1] or {}
                until = gen_kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                encoder = self.loaded.encoder
                batch = encoder.collate([encoder.encode(s, train=False) for s in samples])
                results = generate_batch(self.loaded, batch, int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)))
                for n, (task, doc_id), result in zip(chunk, keys, results):
                    answer = result.answer
                    for stop in until:
                        if stop and stop in answer:
                            answer = answer.split(stop)[0]
                    answers[n] = answer
                    self._log_kept(task, doc_id, result)
                bar.update(len(chunk))
        bar.close()
        return answers

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """Sum of the continuation's token log-probabilities given context and visuals, and
        whether greedy decoding would produce it, through the pruned forward."""
        from photon.evaluation.likelihood import continuation_logprobs, score_answer_only

        out = []
        for request in requests:
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            doc = self._doc(task, split, doc_id)
            continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
            sample = self._sample(context, doc_to_visual(doc), f"{task}/{split}/{doc_id}", answer=str(continuation))
            encoded = score_answer_only(self.loaded.encoder.encode(sample, train=True))
            out += continuation_logprobs(self.loaded, [encoded])
            self._log_kept(task, doc_id, None)
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        raise PhotonError("photon (lmms-eval): multi-round tasks are not supported; Photon answers one question per prompt")

    # -- kept tokens -------------------------------------------------------------------------------
    def _log_kept(self, task: str, doc_id, result) -> None:
        from loguru import logger

        records = self.loaded.model._photon.records
        if result is None:  # loglikelihood: the forward's own record
            record = records[0] if len(records) else None
            n_visual = record["n_visual"] if record else 0
            n_kept, theta = (record["n_kept"], record["theta"]) if record else (0, None)
        else:
            n_visual, n_kept, theta = result.n_visual, result.n_kept, result.theta
        row = {"task": task, "doc_id": doc_id, "n_visual": n_visual, "n_kept": n_kept,
               "keep_ratio": n_kept / n_visual if n_visual else None, "theta": theta}
        self.kept.append(row)
        logger.info(f"photon kept {n_kept}/{n_visual} visual tokens: {task} doc {doc_id}")
        if self.kept_log is not None:
            self.kept_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.kept_log, "a", encoding="utf-8") as sink:
                sink.write(json.dumps(row) + "\n")
