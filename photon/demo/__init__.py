"""`photon demo`: train the tiny backbone on a synthetic volumetric VQA set, with and without
Photon, and measure accuracy, kept tokens, speed, memory and where the kept tokens fall.

phantoms.py makes the set (volumes whose answer lives in one known region), config.py holds
the settings, run.py trains and evaluates, report.py prints the table.
"""
