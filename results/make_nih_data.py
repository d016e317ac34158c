"""NIH ChestX-ray14, data-incremental scenario: configs/results-nih-data.yaml -> results/nih_data.json.

Long (tens of minutes on a few CPU cores; resumes finished tasks). From the repo root:

    python results/make_nih_data.py [--store DIR] [--work DIR]
"""

from scenario_results import scenario_results_main

if __name__ == "__main__":
    scenario_results_main("nih_data", "configs/results-nih-data.yaml")
