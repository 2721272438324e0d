import os

import numpy as np
import pytest

from photon.modalities.base import Media


PROCESS_GROUP_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _process_group_env_stays_in_its_test():
    """A training run inside the pytest process creates a one-process group on a free port and
    sets RANK/MASTER_PORT in os.environ; the group (and its port) lives on. A later test's
    subprocess (`photon demo`, lmms-eval) would inherit those variables, try to join that port
    and fail with EADDRINUSE, so each test gets the environment it started with back."""
    before = {key: os.environ.get(key) for key in PROCESS_GROUP_ENV}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class Sample:
    """The shape photon.modalities.dataset.Sample has: id, messages, media, meta."""

    def __init__(self, id, messages, media, meta=None):
        self.id, self.messages, self.media, self.meta = id, messages, media, meta or {}


def video_sample(i, frames, height, width, question, answer=None, seed=0, channels=3):
    rng = np.random.default_rng(seed + i)
    media = Media(frames=rng.random((frames, channels, height, width), dtype=np.float32), kind="video", source=f"v{i}", fps=1.0)
    messages = [{"role": "user", "content": "<video>" + question}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return Sample(str(i), messages, [media])


@pytest.fixture
def ragged_samples():
    """Three prompts of different lengths and visual grids (a ragged batch)."""
    return [
        video_sample(0, 4, 56, 84, "Is there a lesion in the upper left region?", "Yes, in the upper left."),
        video_sample(1, 2, 112, 56, "How many lesions are there?", "Two."),
        video_sample(2, 6, 56, 56, "Which region holds the lesion, left or right?", "The left one."),
    ]
