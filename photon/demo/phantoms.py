"""A seeded synthetic volumetric VQA set whose answers each depend on one known region.

Each case is a chest-like CT phantom in HU: air, an elliptic body (soft tissue), two lung
fields, and 0-3 spherical lesions of varying size, each in its own quadrant of the axial
plane. Quadrants are named in patient terms, as in the model-input convention (PHOTON_SPEC
section 1: H runs anterior -> posterior, W patient-left -> patient-right), so "left anterior"
is the first half of H and the first half of W on every slice.

Four kinds of question:
- presence: "Is there a lesion?" -> yes / no; the relevant region is every lesion.
- exists: "Is there a lesion in the left anterior quadrant?" -> yes / no; the relevant
  region is the asked quadrant.
- where: "Which quadrant holds the lesion?" (one lesion) -> its quadrant's name; the relevant
  region is that quadrant.
- count: "How many lesions are there?" -> 0-3; the relevant region is every lesion.

Regions differ by anatomy as real chests do, so a small model can tell them apart by content as
well as by position: each quadrant holds a structure of its own (a heart-like mass left
anterior, a liver-like field right anterior, an aorta-like vessel left posterior, a bony
vertebra-like ring right posterior), none as bright as an enhancing lesion.

The grounding set (write_grounding) describes the same kind of volumes region by region
("left anterior: lesion, 18 mm. right anterior: clear. ..."), the way pretraining on image
descriptions grounds a released model's words in image regions.

Volumes are written as NIfTI in L,P,S voxel order with thick axial slices, so they go
through the same CT loader as a user's files (with `preprocess: false` and the stored
size) and land in the model input exactly as generated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

QUADRANTS = ("left anterior", "right anterior", "left posterior", "right posterior")
KINDS = ("presence", "exists", "where", "count")
SPLITS = ("train", "test", "ground", "pretrain", "pretrain-check")
KIND_PROBS = (0.4, 0.3, 0.15, 0.15)
LESION_COUNT_PROBS = (0.1, 0.3, 0.3, 0.3)  # 0, 1, 2, 3 lesions (exists and count questions)
PRESENCE_COUNT_PROBS = (0.5, 0.25, 0.15, 0.1)  # presence questions: half the volumes hold none
# Pretraining volumes: every answer of every kind common enough to learn (presence yes 0.7, a
# quadrant holding one 0.34, "where" asked of the quarter with a single lesion).
PRETRAIN_COUNT_PROBS = (0.3, 0.25, 0.25, 0.2)
FOV_MM = 240.0  # in-plane field of view, whatever the pixel count
SLICE_MM = 8.0  # axial slice thickness
RADIUS_MM = (14.0, 26.0)  # a lesion spans most of a merged token (28 pixels, 60 mm) or more
AIR, TISSUE, LUNG, LESION = -1000.0, 40.0, -850.0, 600.0  # enhancing lesions
# The scanner couch under every patient: the brightest thing in every volume, so the loader's
# per-volume min-max maps HU to one scale for every phantom (air 0, couch 1) whether or not it
# holds a lesion; without it a lesion would rescale the whole volume, a shortcut to "is there one".
COUCH = 1000.0
COUCH_MM = (0.43, 0.46)  # its rows, as fractions of the field of view below the centre (posterior)
NOISE_HU = 12.0
# Each quadrant's own structure: (HU, centre x, centre y, radius x, radius y) with x patient-left ->
# right and y anterior -> posterior as fractions of the field of view; a ring has a hollow centre.
ANATOMY = {
    "left anterior": (100.0, -0.10, -0.18, 0.07, 0.06),  # heart-like mass (blood pool)
    "right anterior": (60.0, 0.17, -0.16, 0.08, 0.07),  # liver-like parenchyma
    "left posterior": (160.0, -0.07, 0.20, 0.035, 0.035),  # aorta-like vessel (contrast)
    "right posterior": (220.0, 0.08, 0.22, 0.05, 0.045),  # vertebra-like bony ring
}

# The answers each kind allows: closed questions are also scored by which of these the model finds
# likeliest (photon/evaluation/likelihood.py), and a free answer outside them is counted.
CHOICES = {
    "presence": ("yes", "no"),
    "exists": ("yes", "no"),
    "where": QUADRANTS,
    "count": ("0", "1", "2", "3"),
    "describe": ("lesion", "clear"),  # one quadrant described, as grounding asks
}

QUESTIONS = {
    "presence": "Is there a lesion? Answer yes or no.",
    "exists": "Is there a lesion in the {region} quadrant? Answer yes or no.",
    "where": "Which quadrant holds the lesion? Answer left anterior, right anterior, left posterior or right posterior.",
    "count": "How many lesions are there? Answer with a number.",
}


@dataclass(frozen=True)
class Lesion:
    quadrant: str
    center: tuple[float, float, float]  # (d, h, w) in model-input voxels
    radius_mm: float


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    question: str
    answer: str
    region: str | None  # the asked quadrant (exists) or the lesion's (where); None otherwise
    lesions: tuple[Lesion, ...]
    shape: tuple[int, int, int]  # model input (D, H, W)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return spacing_of(self.shape)

    def meta(self) -> dict:
        return {
            "kind": self.kind, "region": self.region, "shape": list(self.shape),
            "lesions": [{"quadrant": l.quadrant, "center": list(l.center), "radius_mm": l.radius_mm} for l in self.lesions],
        }


def spacing_of(shape) -> tuple[float, float, float]:
    """(d, h, w) voxel size in mm."""
    _, height, width = shape
    return SLICE_MM, FOV_MM / height, FOV_MM / width


def quadrant_of(h: float, w: float, shape) -> str:
    _, height, width = shape
    side = "left" if w < width / 2 else "right"
    front = "anterior" if h < height / 2 else "posterior"
    return f"{side} {front}"


def _grid_mm(shape):
    """Voxel-centre coordinates in mm from the volume centre: (z, y, x) with y anterior -> posterior
    and x patient-left -> patient-right, each shaped to broadcast over (D, H, W)."""
    spacing = spacing_of(shape)
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    return np.meshgrid(*axes, indexing="ij", sparse=True)


def body_masks(shape):
    z, y, x = _grid_mm(shape)
    body = (x / (0.46 * FOV_MM)) ** 2 + (y / (0.40 * FOV_MM)) ** 2 < 1
    lungs = ((np.abs(x) - 0.22 * FOV_MM) / (0.17 * FOV_MM)) ** 2 + (y / (0.30 * FOV_MM)) ** 2 < 1
    ones = np.ones(shape, dtype=bool)
    return body & ones, lungs & body & ones


def lesion_mask(lesion: Lesion, shape) -> np.ndarray:
    spacing = spacing_of(shape)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    distance = sum(((axis - c) * s) ** 2 for axis, c, s in zip((z, y, x), lesion.center, spacing))
    return distance < lesion.radius_mm**2


def _place(quadrant: str, rng: np.random.Generator, shape) -> Lesion:
    """A lesion wholly inside `quadrant` and inside the body (rejection sampling)."""
    depth, height, width = shape
    sd, sh, sw = spacing_of(shape)
    side, front = quadrant.split()
    for _ in range(1000):
        radius = float(rng.uniform(*RADIUS_MM))
        # mm offsets from the centre lines, away from both midlines by the radius plus a margin
        dx = float(rng.uniform(radius + 4, 0.46 * FOV_MM - radius))
        dy = float(rng.uniform(radius + 4, 0.40 * FOV_MM - radius))
        if (dx + radius) ** 2 / (0.46 * FOV_MM) ** 2 + (dy + radius) ** 2 / (0.40 * FOV_MM) ** 2 >= 0.95:
            continue
        x = -dx if side == "left" else dx
        y = -dy if front == "anterior" else dy
        z = float(rng.uniform(-(depth - 1) / 2 * sd * 0.6, (depth - 1) / 2 * sd * 0.6))
        center = (z / sd + (depth - 1) / 2, y / sh + (height - 1) / 2, x / sw + (width - 1) / 2)
        return Lesion(quadrant, tuple(round(c, 3) for c in center), round(radius, 3))
    raise RuntimeError(f"could not place a lesion in {quadrant} of a {shape} volume")


def make_case(index: int, split: str, rng: np.random.Generator, shape) -> Case:
    kind = str(rng.choice(KINDS, p=KIND_PROBS))
    counts = PRESENCE_COUNT_PROBS if kind == "presence" else LESION_COUNT_PROBS
    n = 1 if kind == "where" else int(rng.choice(4, p=counts))
    quadrants = [QUADRANTS[i] for i in rng.permutation(4)[:n]]
    lesions = tuple(_place(q, rng, shape) for q in quadrants)
    region = None
    if kind == "exists":
        empty = [q for q in QUADRANTS if q not in quadrants]
        region = quadrants[0] if quadrants and rng.random() < 0.5 else str(rng.choice(empty))
        answer = "yes" if region in quadrants else "no"
    elif kind == "where":
        region = answer = quadrants[0]
    elif kind == "presence":
        answer = "yes" if quadrants else "no"
    else:
        answer = str(n)
    question = QUESTIONS[kind].format(region=region)
    return Case(f"demo-{split}-{index:04d}", kind, question, answer, region, lesions, tuple(shape))


def anatomy_masks(shape) -> dict[str, np.ndarray]:
    """(D, H, W) bool per quadrant: its own structure (ANATOMY), the same on every slice."""
    _, y, x = _grid_mm(shape)
    masks = {}
    for quadrant, (_, cx, cy, rx, ry) in ANATOMY.items():
        inside = ((x - cx * FOV_MM) / (rx * FOV_MM)) ** 2 + ((y - cy * FOV_MM) / (ry * FOV_MM)) ** 2
        mask = inside < 1 if quadrant != "right posterior" else (inside < 1) & (inside > 0.35)  # the ring
        masks[quadrant] = np.broadcast_to(mask, shape)
    return masks


def render(case: Case, rng: np.random.Generator) -> np.ndarray:
    """The case's volume in HU, in the model-input convention (D, H, W)."""
    body, lungs = body_masks(case.shape)
    volume = np.where(body, TISSUE, AIR).astype(np.float32)
    volume[lungs] = LUNG
    for quadrant, mask in anatomy_masks(case.shape).items():
        volume[mask & body] = ANATOMY[quadrant][0]
    volume += rng.normal(0.0, NOISE_HU, case.shape).astype(np.float32) * body
    _, y, _ = _grid_mm(case.shape)
    volume[:, ((y >= COUCH_MM[0] * FOV_MM) & (y < COUCH_MM[1] * FOV_MM))[0, :, 0], :] = COUCH
    for lesion in case.lesions:
        volume[lesion_mask(lesion, case.shape)] = LESION + rng.normal(0.0, NOISE_HU)
    return volume


def to_nifti(volume: np.ndarray, spacing):
    """Model-input (D, H, W) HU -> a NIfTI image with L,P,S voxel axes (x to the patient's left,
    y posterior, z superior) that the CT loader turns back into exactly `volume`."""
    import nibabel as nib

    lps = np.ascontiguousarray(volume[:, :, ::-1].transpose(2, 1, 0))  # W runs left->right; x runs right->left
    sd, sh, sw = spacing
    affine = np.diag([-sw, -sh, sd, 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(lps.shape) - 1) / 2)
    return nib.Nifti1Image(np.round(lps).astype(np.int16), affine)


def write_split(folder: str | Path, split: str, n: int, seed: int, shape) -> Path:
    """Write n cases (volumes/ and SPLIT.jsonl records) and return the records path.
    The same (split, n, seed, shape) always writes the same files."""
    import nibabel as nib

    folder = Path(folder)
    (folder / "volumes").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, SPLITS.index(split), n])
    lines = []
    for i in range(n):
        case = make_case(i, split, rng, shape)
        relative = f"volumes/{case.id}.nii.gz"
        nib.save(to_nifti(render(case, rng), case.spacing), str(folder / relative))
        record = {
            "id": case.id,
            "messages": [{"role": "user", "content": "<video>" + case.question}, {"role": "assistant", "content": case.answer}],
            "videos": [relative],
            "meta": case.meta(),
        }
        lines.append(json.dumps(record) + "\n")
    path = folder / f"{split}.jsonl"
    path.write_text("".join(lines))
    return path


# -- grounding: region-wise descriptions ----------------------------------------------------
DESCRIBE_ALL = "Describe each quadrant."
DESCRIBE_ONE = "Describe the {region} quadrant."


def describe(case: Case, region: str | None = None) -> str:
    """The region-wise description of a case: "left anterior: lesion. right anterior: clear. ...",
    or one region's ("lesion" / "clear")."""
    held = {lesion.quadrant for lesion in case.lesions}
    if region is not None:
        return "lesion" if region in held else "clear"
    return " ".join(f"{q}: {'lesion' if q in held else 'clear'}." for q in QUADRANTS)


def write_region_questions(records: str | Path) -> Path:
    """Each volume of a question set asked about each quadrant the way grounding asks
    ("Describe the left anterior quadrant." -> "lesion" / "clear"): RECORDS-regions.jsonl beside
    it, the same volumes. What the grounded backbone answers here shows whether grounding
    taught it the regions, on volumes it never saw."""
    records = Path(records)
    lines = []
    for line in records.read_text().splitlines():
        record = json.loads(line)
        meta = record["meta"]
        lesions = tuple(Lesion(l["quadrant"], tuple(l["center"]), l["radius_mm"]) for l in meta["lesions"])
        case = Case(record["id"], "describe", DESCRIBE_ONE, "", None, lesions, tuple(meta["shape"]))
        lines += [json.dumps(description_record(case, record["videos"], region)) + "\n" for region in QUADRANTS]
    path = records.with_name(f"{records.stem}-regions.jsonl")
    path.write_text("".join(lines))
    return path


def description_record(case: Case, videos: list[str], region: str | None) -> dict:
    """The record asking for a case's description, of every quadrant (region None) or one."""
    question = DESCRIBE_ALL if region is None else DESCRIBE_ONE.format(region=region)
    return {
        "id": f"{case.id}/{region or 'all'}".replace(" ", "-"),
        "messages": [{"role": "user", "content": "<video>" + question},
                     {"role": "assistant", "content": describe(case, region)}],
        "videos": list(videos),
        "meta": {**case.meta(), "kind": "describe", "region": region},
    }


def write_grounding(folder: str | Path, n: int, seed: int, shape) -> Path:
    """n volumes of the same kind as the question set (their own seed stream), each described as
    a whole and region by region (five records per volume): ground.jsonl. Deterministic."""
    describe_each = lambda case, videos: [description_record(case, videos, r) for r in (None, *QUADRANTS)]  # noqa: E731
    return _write_asked(folder, "ground", n, seed, shape, LESION_COUNT_PROBS, describe_each, digits=4)


def _write_asked(folder, split: str, n: int, seed: int, shape, counts, records_of, *, digits: int) -> Path:
    """n volumes from `split`'s own seed stream (0-3 lesions with probabilities `counts`), each
    written as NIfTI and asked `records_of(case, videos)`: SPLIT.jsonl."""
    import nibabel as nib

    folder = Path(folder)
    (folder / "volumes").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, SPLITS.index(split), n])
    lines = []
    for i in range(n):
        count = int(rng.choice(4, p=counts))
        quadrants = [QUADRANTS[k] for k in rng.permutation(4)[:count]]
        case = Case(f"demo-{split}-{i:0{digits}d}", "describe", DESCRIBE_ALL, "", None,
                    tuple(_place(q, rng, shape) for q in quadrants), tuple(shape))
        relative = f"volumes/{case.id}.nii.gz"
        nib.save(to_nifti(render(case, rng), case.spacing), str(folder / relative))
        lines += [json.dumps(record) + "\n" for record in records_of(case, [relative])]
    path = folder / f"{split}.jsonl"
    path.write_text("".join(lines))
    return path


# -- where the answer lives, on the model's token grid -------------------------------------
def relevant_voxels(meta: dict) -> np.ndarray:
    """(D, H, W) bool: the region the record's question depends on."""
    shape = tuple(meta["shape"])
    lesions = [Lesion(l["quadrant"], tuple(l["center"]), l["radius_mm"]) for l in meta["lesions"]]
    if meta["kind"] in ("count", "presence"):
        mask = np.zeros(shape, dtype=bool)
        for lesion in lesions:
            mask |= lesion_mask(lesion, shape)
        return mask
    _, height, width = shape
    side, front = meta["region"].split()
    mask = np.zeros(shape, dtype=bool)
    rows = slice(0, height // 2) if front == "anterior" else slice(height // 2, height)
    cols = slice(0, width // 2) if side == "left" else slice(width // 2, width)
    mask[:, rows, cols] = True
    return mask


def token_share(voxels: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """(t, h, w) float: the share of each token's voxels inside the mask (Qwen's t-major, row,
    column order, each token covering D/t slices and an (H/h) x (W/w) square)."""
    t, h, w = grid
    depth, height, width = voxels.shape
    if depth % t or height % h or width % w:
        raise ValueError(f"a {voxels.shape} input does not split into a {grid} token grid")
    blocks = voxels.reshape(t, depth // t, h, height // h, w, width // w)
    return blocks.mean(axis=(1, 3, 5))


def to_token_grid(voxels: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """(t, h, w) bool: tokens whose block of voxels touches the mask."""
    return token_share(voxels, grid) > 0


def body_tokens(shape, grid: tuple[int, int, int]) -> np.ndarray:
    """(t, h, w) bool: tokens at least half inside the body. Coverage is judged among these (and
    the question's own tokens), so a selection that merely prefers body to air earns nothing."""
    return token_share(body_masks(shape)[0], grid) >= 0.5


# -- pretraining the demo backbone: every question about every volume -----------------------
def pretraining_records(case: Case, videos: list[str]) -> list[dict]:
    """Everything the demo asks, asked of one volume: its description as a whole and region by
    region, presence, each quadrant's "exists", "where" (one lesion only) and count; each
    answer follows from the volume alone. Twelve records (eleven without a single lesion)."""
    held = [lesion.quadrant for lesion in case.lesions]
    asked = [("presence", None, "yes" if held else "no")]
    asked += [("exists", q, "yes" if q in held else "no") for q in QUADRANTS]
    if len(held) == 1:
        asked.append(("where", held[0], held[0]))
    asked.append(("count", None, str(len(held))))
    records = [description_record(case, videos, region) for region in (None, *QUADRANTS)]
    for kind, region, answer in asked:
        records.append({
            "id": f"{case.id}/{kind}" + (f"/{region}".replace(" ", "-") if kind == "exists" else ""),
            "messages": [{"role": "user", "content": "<video>" + QUESTIONS[kind].format(region=region)},
                         {"role": "assistant", "content": answer}],
            "videos": list(videos),
            "meta": {**case.meta(), "kind": kind, "region": region},
        })
    return records


def write_pretraining(folder: str | Path, split: str, n: int, seed: int, shape) -> Path:
    """n volumes of the demo's kind (their own seed stream: split "pretrain" or "pretrain-check",
    never the demo's train/test/ground streams), each asked everything (pretraining_records):
    SPLIT.jsonl. Deterministic."""
    if split not in ("pretrain", "pretrain-check"):
        raise ValueError(f"pretraining writes the 'pretrain' or 'pretrain-check' split, not {split!r}")
    return _write_asked(folder, split, n, seed, shape, PRETRAIN_COUNT_PROBS, pretraining_records, digits=5)
