"""NIH ChestX-ray14, class-incremental scenario: configs/results-nih-class.yaml -> results/nih_class.json.

Long (tens of minutes on a few CPU cores; resumes finished tasks). From the repo root:

    python results/make_nih_class.py [--store DIR] [--work DIR]
"""

from scenario_results import scenario_results_main

if __name__ == "__main__":
    scenario_results_main("nih_class", "configs/results-nih-class.yaml")
