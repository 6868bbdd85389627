"""Write breast_cancer.csv beside this script from the breast-cancer data that
scikit-learn ships (569 rows, 30 features, target 0 = malignant, 1 = benign): a file
shaped like a user's own, for examples/breast_cancer.yaml.

    python examples/data/write_breast_cancer_csv.py
"""

import csv
from pathlib import Path

from sklearn.datasets import load_breast_cancer


def main() -> Path:
    data = load_breast_cancer()
    path = Path(__file__).resolve().parent / "breast_cancer.csv"
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([name.replace(" ", "_") for name in data.feature_names] + ["diagnosis"])
        for row, label in zip(data.data, data.target, strict=True):
            writer.writerow([f"{value:.6g}" for value in row] + [int(label)])
    return path


if __name__ == "__main__":
    print(main())
