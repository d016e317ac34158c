"""NIH ChestX-ray14, label-incremental scenario: configs/results-nih-label.yaml -> results/nih_label.json.

Long (tens of minutes on a few CPU cores; resumes finished tasks). From the repo root:

    python results/make_nih_label.py [--store DIR] [--work DIR]
"""

from scenario_results import scenario_results_main

if __name__ == "__main__":
    scenario_results_main("nih_label", "configs/results-nih-label.yaml")
