"""Evaluation per task: pure metric functions, thresholds, calibration, plots, run evaluators.

* :mod:`~medlens.pipelines.evaluation.probabilities`: a classifier's output as ``N×K`` probabilities;
* :mod:`~medlens.pipelines.evaluation.classification`: thresholds, single-label metrics with
  bootstrap CIs (:mod:`~medlens.pipelines.evaluation.bootstrap`);
* :mod:`~medlens.pipelines.evaluation.multilabel`: per-finding AUC (95 % CI), average
  precision, sensitivity/specificity at per-finding thresholds, prevalence, ECE; macro and
  micro AUC; :mod:`~medlens.pipelines.evaluation.ordinal`: kappa, MAE, the referable call;
* :mod:`~medlens.pipelines.evaluation.calibration`: temperature scaling and ECE;
  :mod:`~medlens.pipelines.evaluation.plots`: ROC, confusion matrix, history;
* ``*_run`` modules: evaluating a run directory of each task, and its model card.

* :mod:`~medlens.pipelines.evaluation.segmentation`: Dice, IoU, AUC inside a field of view;
  :mod:`~medlens.pipelines.evaluation.segmentation_run`: a segmentation run's evaluation.
"""
