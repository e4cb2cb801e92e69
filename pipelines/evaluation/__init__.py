"""Evaluation per task: pure metric functions, thresholds, calibration.

* :mod:`medlens.pipelines.evaluation.multilabel`: per-finding AUC (95 % CI), average
  precision, sensitivity/specificity at per-finding thresholds, prevalence, ECE; macro and
  micro AUC.

Single-label classification metrics are in :mod:`medlens.pipelines.evaluate` and
segmentation's in :mod:`medlens.pipelines.segtrain`; they move here with the evaluation
package of docs/architecture.md.
"""
