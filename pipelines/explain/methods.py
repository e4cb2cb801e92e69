"""The explanation methods by name: one list for the explainer, the report, the service and DICOM export.

No heavy imports here: the report reads it without starting a deep-learning backend.
"""

from __future__ import annotations

__all__ = ["ALIASES", "METHODS", "SEGMENTATION_ALIASES", "SEGMENTATION_METHODS", "SUPERPIXEL", "TITLES"]

#: Method name (as given to ``--explain``) → file and column slug.
METHODS: dict[str, str] = {"gradcam": "gradcam", "gradcam++": "gradcampp", "lime": "lime", "gradient": "gradient",
                           "smoothgrad": "smoothgrad", "ig": "ig", "occlusion": "occlusion", "kernelshap": "kernelshap",
                           "hirescam": "hirescam", "layercam": "layercam", "guided": "guided"}
#: Slug → the name shown to people (report layers, DICOM series descriptions).
TITLES: dict[str, str] = {"gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "lime": "LIME", "gradient": "Gradient",
                          "smoothgrad": "SmoothGrad", "ig": "Integrated Gradients", "occlusion": "Occlusion",
                          "kernelshap": "Kernel SHAP", "hirescam": "HiRes-CAM", "layercam": "Layer-CAM",
                          "guided": "Guided backprop", "seggradcam": "Seg-Grad-CAM"}
#: Methods whose maps are signed superpixel weights (green for, red against), not ``[0, 1]`` heatmaps.
SUPERPIXEL: frozenset[str] = frozenset({"lime", "kernelshap"})
#: Other spellings accepted by ``--explain``.
ALIASES: dict[str, str] = {"gradcampp": "gradcam++", "grad-cam": "gradcam", "grad-cam++": "gradcam++", "shap": "kernelshap",
                           "kernel-shap": "kernelshap", "kernel_shap": "kernelshap", "integrated-gradients": "ig",
                           "hires-cam": "hirescam", "layer-cam": "layercam", "guided-backprop": "guided",
                           "guidedbackprop": "guided", "guided_backprop": "guided"}
#: What ``segment --explain`` accepts: each explains the predicted region's summed class logit.
SEGMENTATION_METHODS: dict[str, str] = {"seg-gradcam": "seggradcam", "gradient": "gradient",
                                        "smoothgrad": "smoothgrad", "ig": "ig", "occlusion": "occlusion",
                                        "lime": "lime", "kernelshap": "kernelshap", "guided": "guided"}
SEGMENTATION_ALIASES: dict[str, str] = {"seggradcam": "seg-gradcam", "seg-grad-cam": "seg-gradcam",
                                        "gradcam": "seg-gradcam", "grad-cam": "seg-gradcam",
                                        "integrated-gradients": "ig", "shap": "kernelshap",
                                        "kernel-shap": "kernelshap", "guided-backprop": "guided"}
