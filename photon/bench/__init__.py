"""`photon bench`: the stock model, Photon and the baseline pruners side by side.

models (what is measured), workload (the synthetic prompts), clock (phase timings), memory
(peak memory per configuration), flops (analytic FLOPs, the ideal ratios), harness (the run),
report (the printed tables).
"""
