"""The stock-only reference lives in the package (photon.bench.reference), where the GPU check uses it too."""

from photon.bench.reference import capture_text_inputs, reference_greedy, reference_logits  # noqa: F401
