"""Baseline visual-token pruners, each a plugin registered through `register_pruners`.

They run in the same runtime as Photon (tokens physically removed, ragged batches), so a
benchmark compares selection rules and nothing else. Each keeps round(keep_ratio x n_visual)
visual tokens per sample (at least selection.min_keep):

- random_keep: `random`, a uniform draw at Photon's layer;
- ise_topk: `ise-topk`, Photon's instruction saliency ranked at a fixed ratio;
- fastv: `fastv`, attention from the last token (Chen et al. 2024);
- visionzip: `visionzip`, vision-encoder attention plus merged context, before the LLM (Yang et al. 2025);
- divprune: `divprune`, max-min diversity of the visual embeddings (Alvar et al. 2025).
"""
