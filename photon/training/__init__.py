"""Photon's two-phase recipe on DeepSpeed: phase 1 aligns the 3D patch embedding, phase 2
finetunes everything with ITS/SGP and the stage schedule (PHOTON_SPEC section 6)."""
