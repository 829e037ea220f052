"""Model selection: transferability scores of backbones on a task (:mod:`.scorers`, fed by
:mod:`.inputs`) and how well their rankings agree with fine-tuned accuracy (:mod:`.ranking`).

A layer of its own below the runner and the reports: numpy, scipy and scikit-learn only, no
PyTorch, no store.
"""
