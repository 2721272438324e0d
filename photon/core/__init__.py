"""Backbone-agnostic Photon: ITS, SGP, objective, schedule, plugin hooks and the pruned runtime."""
