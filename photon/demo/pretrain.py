"""`photon demo --pretrain`: make the demo backbone (photon/demo/backbone.py) once, as a released
model is made before anyone finetunes it: many phantoms, each asked everything the demo asks.

A plain PyTorch loop rather than `photon train`: the loss reads the logits of the demo's
vocabulary only (a few hundred embedding rows instead of 151,936), which makes a step several
times cheaper on a CPU. It stays the full model's loss: every other row of the tied embedding is
zero from the start and never receives a gradient, so each contributes exp(0) to the softmax,
and the loss adds them as one term log(V - n). Volumes go through the same CT loader and encoder
as `photon demo` and `photon train`.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from photon.demo import backbone, phantoms

IGNORE = -100


@dataclass
class PretrainConfig:
    out: str = "runs/demo-pretrain"  # data and the progress log go here
    weights: str = str(backbone.WEIGHTS)  # the compact file written at every check and at the end
    seed: int = 0  # phantoms, data order and initial weights
    volumes: int = 1536  # pretraining phantoms (each asked 11-12 questions)
    check_volumes: int = 128  # held-out phantoms scored at every check
    steps: int = 3000
    batch_size: int = 16
    lr: float = 1.0e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    # A vision tower is pretrained before its VLM. Here a linear read-out of each visual token
    # learns, beside the answers, whether that token holds lesion voxels (the read-out is not
    # shipped): the tower learns a local lesion feature early, which the LLM then learns to find.
    # 0 trains on the answers alone.
    token_loss: float = 1.0
    check_every: int = 500  # score the held-out set and write the weights (atomically) this often
    volume: list[int] = field(default_factory=lambda: list(backbone.VOLUME))
    threads: int = 0  # torch CPU threads (0: torch's own choice)
    progress: bool = True


def vocabulary(encoded: list[dict], extra: list[int]) -> list[int]:
    """The token ids the demo's conversations use: their embedding rows are all that is trained."""
    ids = set(extra)
    for item in encoded:
        ids.update(int(i) for i in item["input_ids"].unique())
    return sorted(ids)


class Volumes:
    """Records whose volumes are loaded once and kept: every volume is asked 11-12 questions."""

    def __init__(self, records: Path, loaded, volume: list[int]):
        from photon.modalities.dataset import PhotonDataset
        from photon.wrapping import media_options

        options = media_options(loaded, {"ct": {"size": list(volume), "preprocess": False}})
        self.dataset = PhotonDataset(records, encoder=None, train=True, media_options=options, strict=True)
        self.encoder = loaded.encoder
        self.media: dict[str, list] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def one_per_conversation(self) -> list[int]:
        """The first record of each distinct conversation text (the vocabulary is theirs)."""
        first: dict[str, int] = {}
        for i, entry in enumerate(self.dataset.entries):
            first.setdefault(json.dumps(entry.messages), i)
        return sorted(first.values())

    def encode(self, index: int) -> dict:
        entry = self.dataset.entries[index]
        key = str(entry.media[0][1])
        if key not in self.media:
            self.media[key] = self.dataset.load_sample(index).media
        from photon.modalities.dataset import Sample

        return self.encoder.encode(Sample(entry.id, [dict(m) for m in entry.messages], self.media[key], dict(entry.meta)), train=True)

    def batch(self, indices) -> dict:
        return self.encoder.collate([self.encode(int(i)) for i in indices])


def answer_logits(model, batch: dict, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits over the vocabulary rows at every position that predicts an answer token, the answer
    token ids there (the caller maps them to `rows`' order), and each position's sample index."""
    from photon.adapters.qwen_inputs import model_inputs

    inputs = model_inputs(batch)
    labels = inputs.pop("labels")
    hidden = model.model(**inputs).last_hidden_state  # (B, L, hidden): no (L x 151,936) logits
    targets = labels[:, 1:]
    where = targets != IGNORE
    picked = hidden[:, :-1][where]
    sample = where.nonzero()[:, 0]
    return picked @ rows.T, targets[where], sample


def lesion_tokens(meta: dict, grid: tuple[int, int, int]) -> torch.Tensor:
    """(t*h*w,) float: 1 for each visual token whose block of voxels is at least 5% lesion."""
    shape = tuple(meta["shape"])
    mask = np.zeros(shape, dtype=bool)
    for lesion in meta["lesions"]:
        mask |= phantoms.lesion_mask(phantoms.Lesion(lesion["quadrant"], tuple(lesion["center"]), lesion["radius_mm"]), shape)
    return torch.from_numpy(phantoms.token_share(mask, grid).reshape(-1) >= 0.05).float()


class VisualTokens:
    """The vision tower's merged tokens of the last forward, in the LLM's (t, h, w) order."""

    def __init__(self, model):
        self.tokens = None
        self.handle = model.model.visual.register_forward_hook(self.keep)

    def keep(self, module, args, output):
        # transformers >= 5.2x returns the merged tokens as pooler_output; earlier releases a tensor
        self.tokens = output if isinstance(output, torch.Tensor) else output.pooler_output


def full_softmax_loss(logits: torch.Tensor, targets: torch.Tensor, n_other: int) -> torch.Tensor:
    """Cross-entropy over the whole vocabulary when every row outside `logits`' columns is zero."""
    other = torch.full((logits.shape[0], 1), math.log(n_other), dtype=logits.dtype, device=logits.device)
    return (torch.logsumexp(torch.cat([logits, other], 1), 1) - logits.gather(1, targets[:, None]).squeeze(1)).mean()


class Pretraining:
    def __init__(self, cfg: PretrainConfig, say: Callable[[str], None] = print):
        self.cfg, self.say = cfg, say
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        out = Path(cfg.out)
        data = out / "data"
        shape = tuple(cfg.volume)
        say(f"writing {cfg.volumes} pretraining and {cfg.check_volumes} held-out phantoms ({'x'.join(map(str, shape))}) to {data}")
        train_records = phantoms.write_pretraining(data, "pretrain", cfg.volumes, cfg.seed, shape)
        check_records = phantoms.write_pretraining(data, "pretrain-check", cfg.check_volumes, cfg.seed, shape)
        self.loaded = backbone.build(seed=cfg.seed)
        self.model = self.loaded.model
        self.train = Volumes(train_records, self.loaded, cfg.volume)
        self.check = Volumes(check_records, self.loaded, cfg.volume)
        self.vocab = vocabulary([self.train.encode(i) for i in self.train.one_per_conversation()]
                                + [self.check.encode(i) for i in self.check.one_per_conversation()], [self.loaded.encoder.pad_id])
        self.vocab_t = torch.tensor(self.vocab)
        self.index_of = torch.full((backbone.embedding(self.model).shape[0],), -1, dtype=torch.long)
        self.index_of[self.vocab_t] = torch.arange(len(self.vocab))
        self.n_other = backbone.embedding(self.model).shape[0] - len(self.vocab)
        self.visual = VisualTokens(self.model)
        self.readout = torch.nn.Linear(self.model.config.text_config.hidden_size, 1)
        self.targets: dict[str, torch.Tensor] = {}
        with torch.no_grad():  # the vocabulary's rows start as the architecture's own init would (std 0.02)
            generator = torch.Generator().manual_seed(cfg.seed)
            rows = torch.randn(len(self.vocab), self.model.config.text_config.hidden_size, generator=generator) * 0.02
            backbone.embedding(self.model)[self.vocab_t] = rows

    def rows(self) -> torch.Tensor:
        return backbone.embedding(self.model)[self.vocab_t]

    def loss(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """The answers' loss and the visual tokens' lesion read-out loss of one batch."""
        batch = self.train.batch(indices)
        logits, targets, _ = answer_logits(self.model, batch, self.rows())
        mapped = self.index_of[targets]
        if (mapped < 0).any():
            raise RuntimeError("an answer token outside the demo vocabulary")  # vocabulary() missed a record kind
        answers = full_softmax_loss(logits, mapped, self.n_other)
        grids = batch["video_grid_thw"]
        merge = self.model.config.vision_config.spatial_merge_size
        wanted = []
        for i, grid in zip(indices, grids.tolist()):
            entry = self.train.dataset.entries[int(i)]
            key = str(entry.media[0][1])
            if key not in self.targets:
                self.targets[key] = lesion_tokens(entry.meta, (grid[0], grid[1] // merge, grid[2] // merge))
            wanted.append(self.targets[key])
        wanted = torch.cat(wanted)
        read = self.readout(self.visual.tokens).squeeze(-1)
        if read.shape != wanted.shape:
            raise RuntimeError(f"{read.shape[0]} visual tokens for {wanted.shape[0]} targets")
        return answers, torch.nn.functional.binary_cross_entropy_with_logits(read, wanted)

    @torch.no_grad()
    def score(self) -> dict:
        """Held-out answers, teacher-forced: a record is right when every answer token is the
        full vocabulary's argmax (a zero row wins over logits below 0). Per kind, beside the
        commoner answer's share."""
        self.model.eval()
        right, answers = defaultdict(list), defaultdict(list)
        for start in range(0, len(self.check), 32):
            indices = range(start, min(start + 32, len(self.check)))
            batch = self.check.batch(indices)
            logits, targets, sample = answer_logits(self.model, batch, self.rows())
            best = logits.max(1)
            hit = (best.values > 0) & (self.vocab_t[best.indices] == targets)
            for local, i in enumerate(indices):
                entry = self.check.dataset.entries[i]
                kind = entry.meta["kind"]
                right[kind].append(bool(hit[sample == local].all()))
                answers[kind].append(entry.messages[-1]["content"])
        self.model.train()
        scores = {}
        for kind, hits in right.items():
            counts = defaultdict(int)
            for a in answers[kind]:
                counts[a] += 1
            scores[kind] = {"accuracy": round(float(np.mean(hits)), 4), "prior": round(max(counts.values()) / len(hits), 4), "n": len(hits)}
        return scores

    def run(self) -> dict:
        from tqdm import tqdm

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        model = self.model
        model.train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed_tokens" not in n]
        rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed_tokens" not in n)]
        rest += list(self.readout.parameters())
        optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                                      lr=cfg.lr, betas=(0.9, 0.98))

        def rate(step):
            if step < cfg.warmup_steps:
                return (step + 1) / cfg.warmup_steps
            return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, rate)
        rng = np.random.default_rng([cfg.seed, 23])
        order: list[int] = []
        log_path = Path(cfg.out) / "pretrain-log.jsonl"
        log_path.write_text("")
        checks, started, losses, token_losses = [], time.perf_counter(), [], []
        bar = tqdm(total=cfg.steps, desc="pretrain demo backbone", unit="step", disable=not cfg.progress)
        for step in range(cfg.steps):
            if len(order) < cfg.batch_size:
                order += rng.permutation(len(self.train)).tolist()
            indices, order = order[: cfg.batch_size], order[cfg.batch_size:]
            answers, tokens = self.loss(indices)
            optimiser.zero_grad(set_to_none=True)
            (answers + cfg.token_loss * tokens).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            losses.append(answers.item())
            token_losses.append(tokens.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", tokens=f"{np.mean(token_losses[-50:]):.3f}")
            if (step + 1) % cfg.check_every == 0 or step + 1 == cfg.steps:
                scores = self.score()
                entry = {"step": step + 1, "seconds": round(time.perf_counter() - started, 1),
                         "loss": round(float(np.mean(losses[-cfg.check_every:])), 4),
                         "token_loss": round(float(np.mean(token_losses[-cfg.check_every:])), 4), "held_out": scores}
                checks.append(entry)
                with log_path.open("a") as handle:
                    handle.write(json.dumps(entry) + "\n")
                self.say("  step {step}: loss {loss}; held-out accuracy (prior) ".format(**entry)
                         + ", ".join(f"{k} {v['accuracy']:.2f} ({v['prior']:.2f})" for k, v in sorted(scores.items())))
                facts = {"settings": asdict(cfg), "vocabulary_size": len(self.vocab), "checks": checks,
                         "complete": step + 1 == cfg.steps}
                backbone.save(model, self.vocab, cfg.weights, facts)
        bar.close()
        model.eval()
        return {"weights": cfg.weights, "checks": checks, "vocabulary_size": len(self.vocab)}


def pretrain(cfg: PretrainConfig, say: Callable[[str], None] = print) -> dict:
    return Pretraining(cfg, say).run()
