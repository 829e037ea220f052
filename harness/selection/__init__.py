"""Model selection: transferability scores of backbones on a task (:mod:`.scorers`, fed by
:mod:`.inputs`) and how well their rankings agree with fine-tuned accuracy (:mod:`.ranking`).

A layer of its own below the runner and the reports: numpy and scipy only (no scikit-learn:
its estimators are reimplemented batched and tested equal to it), no
PyTorch, no store.
"""
